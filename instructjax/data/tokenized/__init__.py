"""A task's examples, encoded once and kept in the tokenized cache (by one host or several)."""
