"""Rows -> conversations: reading files and hub splits, each dataset's quirks, the built-in rows."""
