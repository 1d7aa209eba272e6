"""Shared benchmark helpers: the parser and results tail every benchmark shares, the RESULTS.md section
writer, load average, and the training step users run.

`parser(__doc__)` is a benchmark's argument parser with its results flags (whether it appends, where its
headline figures go as JSON); `finish(args, title, body, summary)` is its tail: the section appended (or not)
and the JSON written. `append_results(title, body)` appends a dated section with machine, command and load
average (taken at the start and the end of the measurement, since these machines are shared).
`train_step(...)` builds the jitted AdamW step of instructjax.train.trainer (what `instructjax train` runs)
around a fresh model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from instructjax.core.libtpu import quiet_without_tpu

quiet_without_tpu()  # the benchmarks are entry points: libtpu (installed everywhere) quiet where there is no TPU

RESULTS = Path(__file__).with_name("RESULTS.md")
RESULTS_HEADER = "# Benchmark results\n\nEach benchmark appends a dated section: machine, command, figures.\n"


def load_average() -> str:
    """The 1/5/15-minute load average as 'a, b, c' (with the CPU count, to judge noise)."""
    a, b, c = os.getloadavg()
    return f"{a:.2f}, {b:.2f}, {c:.2f} on {os.cpu_count()} CPUs"


def machine() -> str:
    """One line naming the host: OS, architecture, CPUs, Python, and the JAX/torch versions if imported."""
    parts = [platform.platform(), platform.machine(), f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}"]
    for name in ("jax", "torch", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            parts.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(parts)


def command() -> str:
    """The command line that ran this benchmark, as typed."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


APPEND_FLAGS = {  # flag -> (appends when given, help)
    "--no-append": (False, "do not append to RESULTS.md"),
    "--no-write": (False, "print only; do not append to RESULTS.md"),
    "--record": (True, "append the results to benchmarks/RESULTS.md"),
}


def parser(doc: str | None, *, append: str = "--no-append", summary: str | None = "--json",
           append_help: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's parser: the first line of its docstring as description, and its results flags.

    `append`: `--no-append` or `--no-write` (the section goes to RESULTS.md unless given) or `--record` (only
    when given); either way read as `args.append`. `summary`: the flag naming a file for the headline figures
    as JSON (`--json`, run_all's summary), read as `args.json`; None: the benchmark writes none.
    """
    p = argparse.ArgumentParser(description=doc.split("\n")[0] if doc else None)
    add_results_flags(p, append=append, summary=summary, append_help=append_help)
    return p


def add_results_flags(p: argparse.ArgumentParser, *, append: str = "--no-append", summary: str | None = "--json",
                      append_help: str | None = None) -> None:
    """Add `parser`'s results flags to `p` here (where a benchmark's help lists them among its own)."""
    given, default_help = APPEND_FLAGS[append]
    p.add_argument(append, dest="append", action="store_true" if given else "store_false",
                   help=append_help or default_help)
    if summary:
        p.add_argument(summary, dest="json", default=None, help="write the headline figures here (JSON)")
    else:
        p.set_defaults(json=None)


def finish(args: argparse.Namespace, title: str, body: str, summary: dict[str, Any] | None = None, *,
           load_before: str | None = None) -> None:
    """A benchmark's results tail: `body` appended to RESULTS.md under `title` if `args.append`, then
    `summary` written to `args.json` (where given)."""
    if args.append:
        append_results(title, body, load_before=load_before)
    if summary is not None:
        write_summary(args.json, summary)


def append_results(title: str, body: str, *, load_before: str | None = None) -> None:
    """Append `## title — date` with machine, command, load average and `body` (markdown) to RESULTS.md."""
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    load = f"{load_before} at the start, {load_average()} at the end" if load_before else load_average()
    section = (
        f"\n## {title} — {stamp}\n\n"
        f"Machine: {machine()}. Command: `{command()}`. Load average: {load}.\n\n{body.rstrip()}\n"
    )
    if not RESULTS.exists():
        RESULTS.write_text(RESULTS_HEADER)
    with RESULTS.open("a") as f:
        f.write(section)
    print(f"appended to {RESULTS}")


def child_result(result: dict[str, Any]) -> None:
    """Print a `--child` process's result for `run_child` to read."""
    print("RESULT " + json.dumps(result), flush=True)


def run_child(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Run `python ARGV` (a benchmark in its `--child` mode) in a fresh process and return its result, or None
    after printing its stderr tail if it failed. Default environment: this one, on JAX's CPU platform."""
    import subprocess

    env = {**os.environ, "JAX_PLATFORMS": "cpu"} if env is None else env
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{' '.join(argv[:3])}...: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        return None
    return json.loads(lines[-1][len("RESULT "):])


def write_summary(path: str | None, summary: dict[str, Any]) -> None:
    """Write a script's headline figures as JSON (for run_all's summary table); no-op without a path."""
    if path:
        Path(path).write_text(json.dumps(summary, indent=1))


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- the training step ---------------------------------------------------------------------------


def attention_flops_per_token(config: Any, seq_len: int) -> float:
    """Attention score and value matmuls, forward + backward, per token (PaLM appendix B: 12 L T H D)."""
    return 12.0 * config.num_layers * seq_len * config.num_heads * config.head_dim


def matmul_params(config: Any) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding (a lookup) and norms."""
    from instructjax.model.config import param_count

    norms = (2 * config.num_layers + 1) * config.hidden_size
    lookup = 0 if config.tie_embeddings else config.vocab_size * config.hidden_size
    return param_count(config) - norms - lookup


def model_flops_per_token(config: Any, seq_len: int) -> float:
    """Model FLOPs per trained token: 6 x matmul parameters + attention (no rematerialisation counted)."""
    return 6.0 * matmul_params(config) + attention_flops_per_token(config, seq_len)


def synthetic_batch(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, Any]:
    """A packed batch (numpy, the trainer's keys): 2 segments per row, every token trained but segment ends."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(batch, seq_len), dtype=np.int32)
    cut = seq_len // 2
    segment_ids = np.where(np.arange(seq_len) < cut, 1, 2).astype(np.int32)[None].repeat(batch, 0)
    positions = np.concatenate([np.arange(cut), np.arange(seq_len - cut)]).astype(np.int32)[None].repeat(batch, 0)
    targets = np.roll(tokens, -1, axis=1)
    loss_weights = np.ones((batch, seq_len), np.float32)
    loss_weights[:, [cut - 1, seq_len - 1]] = 0.0
    return {
        "tokens": tokens,
        "targets": targets,
        "loss_weights": loss_weights,
        "segment_ids": segment_ids,
        "positions": positions,
        "source_ids": np.zeros((batch, seq_len), np.int32),
    }


def train_step(model_config: Any, *, lr: float = 1e-4, total_steps: int = 1000, seed: int = 0
               ) -> tuple[Callable, Any, Any, Any, str]:  # fmt: skip
    """(jitted step, params, opt_state, mesh, which): the trainer's step over a fresh `Decoder(model_config)`.

    `step(params, opt_state, batch) -> (params, opt_state, metrics)`, params and optimizer state donated,
    as in `Trainer.run`. Call it under `jax.set_mesh(mesh)`. `which` names the step implementation.
    """
    from flax import nnx

    from instructjax.core import sharding
    from instructjax.core.config import RunConfig
    from instructjax.model.decoder import Decoder
    from instructjax.train.optim import make_optimizer
    from instructjax.train.step import build_step

    config = RunConfig(seed=seed)
    config.optim.lr = lr
    mesh = sharding.make_mesh(config.mesh)
    tx, _ = make_optimizer(config.optim, total_steps)
    build = build_step(model_config, tx, config, 1, mesh, seed)  # the trainer's step, shardings and donation
    model = sharding.create_sharded_model(lambda: Decoder(model_config, rngs=nnx.Rngs(seed)), mesh)
    params = nnx.to_pure_dict(nnx.state(model))
    opt_state = build.init_optimizer(params)  # over what trains (LoRA: the adapters alone)
    return build.step, params, opt_state, mesh, "instructjax.train.step.build_step"


def timed_steps(step: Callable, params: Any, opt_state: Any, batch: Any, steps: int
                ) -> tuple[list[float], Any, Any]:
    """(each of `steps` steps' seconds, params, opt_state) after two untimed steps (compile + warm-up); call it
    under the step's mesh."""
    import jax

    for _ in range(2):
        params, opt_state, m = step(params, opt_state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, opt_state, m = step(params, opt_state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return times, params, opt_state


def env_summary() -> dict[str, Any]:
    """Load average and CPU count, for the JSON summaries."""
    return {"load_average": load_average()}


def dumps(summary: dict[str, Any]) -> str:
    """Compact JSON of a summary (printed last by each script)."""
    return json.dumps(summary, default=str)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The CPU benchmarks' model and batch options (8 layers x 512 wide, batch 4 x seq 512 by default)."""
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=None, help="default: 8/3 x hidden, rounded to 32")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--remat", default="none")
    parser.add_argument("--attention", default="auto", help="model.attention: auto, xla, blockwise, splash, pallas_gpu")
    parser.add_argument("--scan-layers", default=True, action=argparse.BooleanOptionalAction)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (one measurement of each per round)")


def model_config(args: argparse.Namespace):
    """The benchmark's DecoderConfig (fp32 compute and parameters)."""
    from instructjax.model.config import DecoderConfig

    return DecoderConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate or int(args.hidden * 8 / 3 // 32 * 32),
        num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads or args.heads,
        max_position_embeddings=max(2048, args.seq), dtype="float32", param_dtype="float32", remat=args.remat,
        attention=args.attention, scan_layers=args.scan_layers,
    )  # fmt: skip
