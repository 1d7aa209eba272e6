"""`python -m instructjax.core.stderr_relay HOST`: pass a run process's stderr on (its stdin), turning JAX's report
of a lost host into one line.

When a host of a multi-process run dies, JAX's distributed runtime stops every other host: at once when host 0
(its coordinator) died, after the heartbeat timeout otherwise. It does so from a C++ thread, logging
"Terminating process because the JAX distributed service detected fatal errors", the status (the unhealthy
tasks, or the coordinator's closed socket) and a stack trace, then aborting: nothing in the process can catch
it. The relay passes every complete line on at once (a progress bar's '\\r' ends a line too), holds JAX's report
back, and when its input ends (the process is gone) prints one line naming the lost host instead, unless the
process already printed its own `instructjax: error:` line. It ignores SIGINT and SIGTERM: it ends with its input.
"""

from __future__ import annotations

import os
import re
import signal
import sys

FATAL = "Terminating process because the JAX distributed service detected fatal errors"
_UNHEALTHY = re.compile(r"unhealthy \(stopped sending heartbeats\):\s*([\d,\s]+?)\s*(?:The tasks|$)", re.S)


def lost_hosts(report: str) -> str:
    """Which host JAX's fatal report says is lost, as words."""
    found = _UNHEALTHY.search(report)
    if found:
        ids = [int(i) for i in re.findall(r"\d+", found.group(1))]
        return ("host " if len(ids) == 1 else "hosts ") + ", ".join(map(str, ids)) + " stopped sending heartbeats"
    if "Socket closed" in report or "UNAVAILABLE" in report or "Connection reset" in report:
        return "host 0 (the coordinator of JAX's distributed runtime) stopped"
    first = next((line for line in report.splitlines() if line.strip()), "").strip()
    return f"a host stopped ({first[:200]})"


def relay(source, out, host: str) -> None:
    pending, report, said_error = b"", None, False
    while chunk := source.read1(1 << 16):
        pending += chunk
        lines = re.split(rb"(?<=[\n\r])", pending)
        pending = lines.pop()  # the last piece has no line end yet
        for line in lines:
            text = line.decode(errors="replace")
            if report is None and FATAL in text:
                report = ""
            if report is not None:
                report += text
                continue
            said_error = said_error or text.startswith("instructjax: error:")
            out.write(line)
        if report is None:
            out.flush()
    if report is not None:
        report += pending.decode(errors="replace")
        if not said_error:
            out.write(f"instructjax: error: {lost_hosts(report)}; host {host} stops too (saved checkpoints are "
                      f"intact: run again with --resume)\n".encode())  # fmt: skip
    else:
        out.write(pending)
    out.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    relay(sys.stdin.buffer, os.fdopen(2, "wb", closefd=False), sys.argv[1] if len(sys.argv) > 1 else "?")


if __name__ == "__main__":
    main()
