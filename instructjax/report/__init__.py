"""The papers' tables and figures from a family's runs: our numbers beside the published ones (families.py)."""
