"""What a process does with each signal, as Linux reports it (/proc/PID/status)."""

from __future__ import annotations

import signal
from pathlib import Path


def signal_set(pid: int, field: str = "SigIgn") -> set[str]:
    """The signals process `pid` ignores (`SigIgn`) or catches with a handler (`SigCgt`), by name."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(f"{field}:"))
    mask = int(line.split()[1], 16)
    return {signal.Signals(n).name for n in signal.valid_signals() if 0 < n < 65 and mask >> (n - 1) & 1}
