"""Examples -> a host's batches: which examples a run sees, packed into rows, resumable."""
