"""The log a run leaves off a terminal (a launcher's log file, a CI job): bytes and lines of 100 training steps of
the quickstart, written to a file, beside the same run on a terminal (a pseudo-terminal: tqdm's bar, what every
log got before). Goal: under 4 KB for 100 steps.

    python benchmarks/log_size.py [--steps 100] [--record]
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL = 4096


def train_command(run_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "instructjax.cli", "train", "--config", str(ROOT / "configs" / "quickstart.yaml"),
            f"max_steps={steps}", f"run_dir={run_dir}"]  # fmt: skip


def to_file(run_dir: Path, steps: int) -> bytes:
    """stdout and stderr of the run, both to a file."""
    with tempfile.TemporaryFile() as log:
        subprocess.run(train_command(run_dir, steps), stdout=log, stderr=log, check=True, cwd=ROOT)
        log.seek(0)
        return log.read()


def on_a_terminal(run_dir: Path, steps: int) -> bytes:
    """What a terminal receives from the same run (stdout and stderr on one pseudo-terminal)."""
    out = bytearray()

    def read(fd: int) -> bytes:
        data = os.read(fd, 1 << 16)
        out.extend(data)
        return data

    env = {**os.environ}
    env.pop("TQDM_DISABLE", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the run, on the pseudo-terminal
        os.chdir(ROOT)
        os.execvpe(sys.executable, train_command(run_dir, steps), env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal (else 0)
    try:
        while True:
            read(fd)
    except OSError:  # the child closed the terminal
        pass
    os.waitpid(pid, 0)
    return bytes(out)


def describe(log: bytes) -> tuple[int, int, int]:
    """(bytes, lines, carriage returns)."""
    return len(log), log.count(b"\n"), log.count(b"\r") - log.count(b"\r\n")


def main() -> int:
    p = common.parser(__doc__, append="--record", summary=None, append_help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    load = common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        ours = describe(to_file(Path(tmp) / "file", args.steps))
        tty = describe(on_a_terminal(Path(tmp) / "tty", args.steps))
    rows = [("off a terminal (a log file): plain lines", *ours), ("on a terminal: tqdm's bar", *tty)]
    text = (f"`instructjax train --config configs/quickstart.yaml max_steps={args.steps}`, everything it prints "
            f"(INSTRUCTJAX_PROGRESS_SECONDS={os.environ.get('INSTRUCTJAX_PROGRESS_SECONDS', '30')}); goal: under "
            f"{GOAL} bytes off a terminal.\n\n| where it goes | bytes | lines | carriage returns |\n|---|---|---|---|\n")
    text += "".join(f"| {name} | {b:,} | {n:,} | {r:,} |\n" for name, b, n, r in rows)
    text += f"\n{'Within' if ours[0] < GOAL else 'Over'} the goal: {ours[0]:,} bytes.\n"
    print(text)
    common.finish(args, f"Log size of {args.steps} training steps", text, load_before=load)
    return 0 if ours[0] < GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
