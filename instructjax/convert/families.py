"""Moved: the family records are `instructjax.model.families` (switches, config.json mapping and tensor names side
by side); this name stays for imports written before the move."""

from instructjax.model.families import RECORDS, Family, family_of, supported

__all__ = ["RECORDS", "Family", "family_of", "supported"]
