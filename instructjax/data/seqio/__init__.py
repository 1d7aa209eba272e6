"""The seqio face: registered seqio Tasks and Mixtures, a user's own seqio tasks."""
