"""Conversations -> tokens and the loss mask: the tokenizer, chat templates, encoding on every core."""
