"""Tasks and mixtures as data, looked up by name; the papers' mixtures."""
