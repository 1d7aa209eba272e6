"""One command that proves an accelerator: compiled attention kernels, training MFU, decoding, a real run.

    python benchmarks/accelerator_check.py [--out DIR] [--only kernels,train_step,decode,real_run] [--record]

Runs on whatever JAX sees (GPU or TPU) in under ten minutes and writes DIR/accelerator_check.md and
DIR/accelerator_check.json. Four sections, each in its own process (JAX and torch both want the device):

- kernels: every `model.attention` implementation the platform runs, compiled (not interpreted), on packed
  GQA rows whose documents and last tile end mid-tile: values and dq/dk/dv against float64 numpy and the
  dense XLA implementation, in float32 and bfloat16, as relative L2 errors next to their tolerance; the
  leak test (another document's keys and values change nothing, and get exactly zero gradient).
- train_step: benchmarks/gpu_mfu.py (TinyLlama-1.1B shape, seq 2048, bf16; then the LLaMA-3.2-3B shape): MFU and
  tokens/s beside transformers' PyTorch on the same device.
- decode: greedy `generate` tokens/s at batch 1 and 32 on the same model shape, beside transformers'
  `generate` (both forced to the same number of new tokens).
- real_run: the quickstart config through the CLI for 20 steps (checkpoint.every=10); the last checkpoint
  removed and the run resumed from step 10; the result exported to Hugging Face weights and read back by
  transformers. Its losses must equal the same run on JAX's CPU platform within a bf16 tolerance.

It needs only jax, flax, optax, orbax-checkpoint, transformers and torch beside this package (`pip install
--no-deps -e .`, plus the small `mistral-common` for the built-in tokenizer); a section that cannot run says
why in one line. On a machine without an accelerator it runs a reduced size on the CPU (Pallas kernels in
interpret mode, tiny shapes), which is how CI keeps it from rotting. On a GPU every JAX child gets the GPU XLA
flags of instructjax.core.xla_flags (what launch/gpu.py gives a training run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SECTIONS = ("kernels", "train_step", "decode", "real_run")
TIMEOUT_S = {"kernels": 300, "train_step": 420, "decode": 180, "real_run": 240}
SMALL_TIMEOUT_FACTOR = 3  # the reduced CPU size runs beside other work (CI's parallel tests): limits catch hangs
# relative L2 error ||x - ref|| / ||ref|| allowed against float64: float32 inputs may meet TF32 matmuls on
# GPUs (XLA's default for float32 dots there), bfloat16 keeps 8 bits of mantissa
TOLERANCE = {"float32": 2e-3, "bfloat16": 2e-2}
LOSS_TOLERANCE = 1e-2  # relative, accelerator vs CPU losses of the real run (bf16-level)
RESUME_TOLERANCE = 1e-3  # relative, resumed vs uninterrupted losses on one device (GPU scatter-adds reorder)
TINYLLAMA = ["--layers", "22", "--hidden", "2048", "--intermediate", "5632", "--heads", "32", "--kv-heads", "4"]
STEP_SHAPES = (["--shape", "tinyllama", "--batch", "4"], ["--shape", "llama3.2-3b", "--batch", "2"])  # full size
SMALL_MODEL = ["--layers", "2", "--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2",
               "--vocab", "1000"]


# ---- kernels -------------------------------------------------------------------------------------


def kernel_cases(platform: str, small: bool) -> dict:
    """Implementations, shapes and tiles for this platform and size."""
    impls = {"gpu": ["xla", "blockwise", "pallas_gpu", "cudnn"], "tpu": ["xla", "blockwise", "splash"]}.get(
        platform, ["xla", "blockwise", "pallas_gpu", "splash"])
    # a shape is (batch, length, heads, kv heads, head dim, sliding window, soft-cap)
    if small:  # interpret mode: tiles of 64 leave partial last tiles at T=150; splash tiles are 128 wide
        return {"impls": impls, "shapes": [(2, 150, 4, 2, 16, None, None), (2, 150, 4, 2, 16, 37, 2.0)],
                "block": {"splash": 128, "default": 64}}
    # T=600: no tile size divides it; head dims of TinyLlama (64) and LLaMA-7B (128); T=100: a row shorter
    # than one default tile (what scoring and decoding prefill with); a window and a soft-cap (Gemma-2, Mistral:
    # on a GPU our own Pallas kernel). Tiles: each implementation's default.
    return {"impls": impls, "shapes": [(2, 600, 8, 2, 64, None, None), (2, 600, 8, 2, 128, None, None),
                                       (2, 100, 8, 2, 64, None, None), (2, 600, 8, 2, 128, 200, 2.0)], "block": {}}


def packed_segments(b: int, t: int) -> np.ndarray:  # noqa: F821  (numpy is imported inside)
    """Row 0: three documents, then padding (segment 0); row 1: a one-token document first, and every
    boundary inside a tile."""
    import numpy as np

    def row(fractions: list[float], ids: list[int]):
        lengths = [max(1, round(f * t)) for f in fractions]
        return np.repeat(ids, [*lengths, t - sum(lengths)])

    rows = [row([0.13, 0.47, 0.36], [1, 2, 3, 0]), row([1 / t, 0.05, 0.61], [1, 2, 3, 4])]
    return np.stack([rows[i % 2] for i in range(b)]).astype(np.int32)


def reference_attention(q, k, v, d_out, segments, window=None, softcap=None):
    """float64 numpy forward and backward of causal same-segment GQA attention (batched matmuls over
    [batch, head] in float64: BLAS, seconds at T=1000); a key at distance >= `window` is not seen, scores are
    capped as cap * tanh(s / cap)."""
    import numpy as np

    b, t, h, d = q.shape
    group = h // k.shape[2]
    heads_first = lambda x: np.asarray(x, np.float64).transpose(0, 2, 1, 3)  # noqa: E731  [B, H, T, D]
    q, d_out = heads_first(q), heads_first(d_out)
    k, v = (np.repeat(heads_first(x), group, axis=1) for x in (k, v))  # query head h uses kv head h // group
    distance = np.arange(t)[:, None] - np.arange(t)[None, :]
    near = (distance >= 0) & (distance < (window or t + 1))
    mask = (segments[:, :, None] == segments[:, None, :]) & near[None]
    raw = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    slope = 1.0 if softcap is None else 1 - np.tanh(raw / softcap) ** 2
    scores = np.where(mask[:, None], raw if softcap is None else softcap * np.tanh(raw / softcap), -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = d_out @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * slope / np.sqrt(d)
    per_kv_head = lambda x: x.reshape(b, -1, group, t, d).sum(2)  # noqa: E731  GQA: gradients sum per group
    back = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    dk, dv = per_kv_head(ds.transpose(0, 1, 3, 2) @ q), per_kv_head(p.transpose(0, 1, 3, 2) @ d_out)
    return back(p @ v), back(ds @ k), back(dk), back(dv)


def rel_err(x, ref) -> float:
    import numpy as np

    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref)) if np.isfinite(x).all() else float("nan")


def kernels_section(small: bool) -> dict:
    """Values, gradients and the leak test of each implementation, compiled on this platform. Each row is
    also printed as it is done (`ROW {json}`), so that a section stopped at its time limit still reports."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    platform = jax.default_backend()
    cases = kernel_cases(platform, small)
    rows, leaks = [], []
    for b, t, h, kh, d, window, softcap in cases["shapes"]:
        options = {"window": window, "softcap": softcap}
        segments = packed_segments(b, t)
        rng = np.random.default_rng(t + d)
        q, d_out = (rng.normal(size=(b, t, h, d)).astype(np.float32) for _ in range(2))
        k, v = (rng.normal(size=(b, t, kh, d)).astype(np.float32) for _ in range(2))
        for dtype in ("float32", "bfloat16"):
            cast = [jnp.asarray(x, dtype) for x in (q, k, v, d_out)]
            want = reference_attention(*(np.asarray(x.astype(jnp.float32)) for x in cast), segments, **options)
            got = {}
            for impl in cases["impls"]:
                if impl == "cudnn" and (dtype == "float32" or softcap):
                    continue  # cuDNN's flash attention runs in bfloat16 or float16 only, and has no soft-cap
                block = cases["block"].get(impl, cases["block"].get("default"))
                row = {"kind": "value", "impl": impl, "dtype": dtype, "shape": [b, t, h, kh, d], "block": block,
                       "window": window, "softcap": softcap, "compiled": _compiled(impl, platform),
                       "tolerance": TOLERANCE[dtype]}
                try:
                    got[impl] = _value_and_grads(impl, block, segments, cast, options)
                except Exception as exc:  # noqa: BLE001  one kernel failing must not hide the others
                    row.update(error=_one_line(exc), ok=False)
                else:
                    names = ("out", "dq", "dk", "dv")
                    row["vs_float64"] = {n: rel_err(x, w) for n, x, w in zip(names, got[impl], want, strict=True)}
                    row["vs_xla"] = ({n: rel_err(x, w) for n, x, w in zip(names, got[impl], got["xla"], strict=True)}
                                     if "xla" in got and impl != "xla" else {})
                    row["ok"] = all(e <= TOLERANCE[dtype] for e in row["vs_float64"].values())
                rows.append(_emit(row))
            if (b, t, h, kh, d, window, softcap) in (cases["shapes"][0], cases["shapes"][-1]):
                leaks += [_emit(_leak(impl, cases, cast, segments, dtype, options)) for impl in cases["impls"]
                          if not (impl == "cudnn" and (dtype == "float32" or softcap))]
    return {"platform": platform, "rows": rows, "leaks": leaks,
            "ok": all(r["ok"] for r in rows) and all(r["ok"] for r in leaks)}


def _emit(row: dict) -> dict:
    print("ROW " + json.dumps(row), flush=True)
    return row


def _value_and_grads(impl: str, block: int | None, segments, cast: list, options: dict) -> list:
    """out, dq, dk, dv (float32 numpy) of one implementation under jit, for the cotangent cast[3]."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from instructjax.model import attention

    def forward(q, k, v):
        mask = attention.mask_input(impl, jnp.asarray(segments), options["window"])
        return attention.self_attention(q, k, v, mask, impl, block, **options)

    @jax.jit
    def run(q, k, v, d_out):
        out, vjp = jax.vjp(forward, q, k, v)
        return (out, *vjp(d_out))

    return [np.asarray(x.astype(jnp.float32)) for x in run(*cast)]


def _compiled(impl: str, platform: str) -> str:
    if impl in ("xla", "blockwise"):
        return "compiled (XLA)"
    if impl == "cudnn":
        return "compiled (cuDNN)"
    native = {"pallas_gpu": "gpu", "splash": "tpu"}[impl]
    return "compiled (Pallas)" if platform == native else "interpret"


def _leak(impl: str, cases: dict, cast: list, segments, dtype: str, options: dict) -> dict:
    """Another document's keys/values changed: every other output is bit-identical, and a loss on one
    document gives exactly zero gradient on the other documents' keys and values."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from instructjax.model import attention

    block = cases["block"].get(impl, cases["block"].get("default"))
    q, k, v = cast[:3]

    def forward(q, k, v):
        mask = attention.mask_input(impl, jnp.asarray(segments), options["window"])
        return attention.self_attention(q, k, v, mask, impl, block, **options)

    run = jax.jit(forward)
    try:
        base = np.asarray(run(q, k, v).astype(jnp.float32))
        row, doc = 1, 3
        inside = segments[row] == doc
        noise = jnp.asarray(np.random.default_rng(7).normal(size=k[row].shape) * 3, k.dtype) * inside[:, None, None]
        changed = np.asarray(run(q, k.at[row].add(noise), v.at[row].add(noise)).astype(jnp.float32))
        outside_diff = float(np.abs(changed[row, ~inside] - base[row, ~inside]).max())
        other_rows_equal = bool(np.array_equal(changed[1 - row], base[1 - row]))
        seen = float(np.abs(changed[row, inside] - base[row, inside]).max())

        def doc_loss(k, v):
            out = forward(q, k, v).astype(jnp.float32)
            return jnp.sum(out[row] * jnp.asarray(inside, jnp.float32)[:, None, None])

        dk, dv = (np.asarray(g.astype(jnp.float32)) for g in jax.jit(jax.grad(doc_loss, argnums=(0, 1)))(k, v))
        grad_leak = float(max(np.abs(g[row, ~inside]).max() for g in (dk, dv)))
        grad_leak = max(grad_leak, float(max(np.abs(g[1 - row]).max() for g in (dk, dv))))
        grad_seen = float(min(np.abs(g[row, inside]).max() for g in (dk, dv)))
    except Exception as exc:  # noqa: BLE001
        return {"kind": "leak", "impl": impl, "dtype": dtype, **options, "error": _one_line(exc), "ok": False}
    ok = outside_diff == 0.0 and other_rows_equal and seen > 1e-2 and grad_leak == 0.0 and grad_seen > 0
    return {"kind": "leak", "impl": impl, "dtype": dtype, **options, "outside_max_diff": outside_diff, "change_seen": seen,
            "grad_outside_max": grad_leak, "ok": ok}


# ---- decoding ------------------------------------------------------------------------------------


def decode_config(args):
    """The decoding model: the training step's shape, bf16 weights (as served)."""
    from instructjax.model.config import DecoderConfig

    return DecoderConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                       max_position_embeddings=max(2048, args.prompt + args.new_tokens), dtype="bfloat16",
                       param_dtype="bfloat16")


def decode_jax(args) -> dict:
    """Median seconds of `generate_ids` (greedy, no stop id) per batch size, after a compiling call."""
    import jax
    import numpy as np
    from flax import nnx

    from instructjax.eval.generate import Sampling, generate_ids
    from instructjax.model.decoder import Decoder

    config = decode_config(args)
    model = nnx.jit(lambda: Decoder(config, rngs=nnx.Rngs(0)))()  # one compiled init, not an op per tensor
    sampling = Sampling(max_new_tokens=args.new_tokens)
    out = {}
    for batch in args.batches:
        prompts = np.random.default_rng(batch).integers(3, config.vocab_size, (batch, args.prompt)).tolist()
        t0 = time.perf_counter()
        first = generate_ids(model, prompts, sampling, stop_ids=[-1])
        compile_s = time.perf_counter() - t0
        assert all(len(ids) == args.new_tokens for ids in first)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            generate_ids(model, prompts, sampling, stop_ids=[-1])
            times.append(time.perf_counter() - t0)
        out[str(batch)] = {"s": statistics.median(times), "first_call_s": compile_s}
    return {"results": out, "device": jax.devices()[0].device_kind}


def decode_torch(args) -> dict:
    """Median seconds of transformers' greedy `generate` (bf16, SDPA) forced to the same new tokens."""
    import numpy as np
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    from instructjax.convert import hf_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = decode_config(args)
    with torch.device(device):  # initialised on the device
        model = LlamaForCausalLM._from_config(HFConfig(**hf_config.to_hf(config)), attn_implementation="sdpa",
                                              dtype=torch.bfloat16).eval()
    out = {}
    for batch in args.batches:
        ids = torch.from_numpy(np.random.default_rng(batch).integers(3, config.vocab_size, (batch, args.prompt)))
        ids = ids.to(device)

        def run(ids=ids):
            with torch.no_grad():
                new = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0,
                                     max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            if device == "cuda":
                torch.cuda.synchronize()
            assert new.shape[1] == args.prompt + args.new_tokens
            return new

        run()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        out[str(batch)] = {"s": statistics.median(times)}
    return {"results": out, "version": torch.__version__}


# ---- a real run ----------------------------------------------------------------------------------


def _cli(args: list[str], *, platform: str | None = None, log: Path) -> None:
    env = jax_environment()
    if platform:
        env["JAX_PLATFORMS"] = platform
    with log.open("a") as f:
        f.write(f"$ instructjax {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "instructjax.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"instructjax {args[0]} exited {proc.returncode}: {error_line(log.read_text())}")


def _losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (a later line for a step wins)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {int(r["step"]): float(r["loss"]) for r in map(json.loads, lines) if "loss" in r}


def real_run(args) -> dict:
    """Quickstart through the CLI: 20 steps, resume from step 10, export, losses against the CPU's."""
    import jax

    out = Path(args.out) / "real_run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "cli.log"
    platform = jax.default_backend()  # the backend is only chosen here, not initialised on the device
    common_args = ["--config", str(QUICKSTART), "max_steps=20", "checkpoint.every=10", "log_every=1"]
    cpu = None
    if platform != "cpu":  # the reference: the same run on JAX's CPU platform, alongside
        cpu_log = (out / "cpu.log").open("w")
        cpu = subprocess.Popen([sys.executable, "-m", "instructjax.cli", "train", *common_args,
                                f"run_dir={out / 'cpu'}"], stdout=cpu_log, stderr=subprocess.STDOUT,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=REPO)  # fmt: skip
    t0 = time.perf_counter()
    _cli(["train", *common_args, f"run_dir={out / 'run'}"], log=log)
    train_s = time.perf_counter() - t0
    uninterrupted = _losses(out / "run")
    shutil.rmtree(out / "run" / "checkpoints" / "20")
    _cli(["train", *common_args, f"run_dir={out / 'run'}", "--resume"], log=log)
    resumed = _losses(out / "run")
    _cli(["export", "--checkpoint", str(out / "run"), "--out", str(out / "hf")], log=log)
    if cpu is not None and cpu.wait():
        raise RuntimeError(f"the CPU reference run exited {cpu.returncode} (see {out / 'cpu.log'})")
    reference = _losses(out / "cpu") if cpu is not None else uninterrupted
    steps = sorted(uninterrupted)
    resume_err = max(abs(resumed[s] - uninterrupted[s]) / abs(uninterrupted[s]) for s in range(11, 21))
    cpu_err = max(abs(uninterrupted[s] - reference[s]) / abs(reference[s]) for s in steps)
    export = _compare_export(out / "run", out / "hf")
    ok = (steps == list(range(1, 21)) and resume_err <= RESUME_TOLERANCE and cpu_err <= LOSS_TOLERANCE
          and export["ok"])
    return {"platform": platform, "steps": len(steps), "first_loss": uninterrupted[1], "last_loss": uninterrupted[20],
            "resumed_last_loss": resumed[20], "cpu_last_loss": reference[20], "resume_max_rel": resume_err,
            "cpu_max_rel": cpu_err, "cpu_reference": cpu is not None, "train_s": train_s, "export": export,
            "ok": ok}


def _compare_export(run_dir: Path, hf_dir: Path) -> dict:
    """Logits of the exported model in transformers (CPU, float32) against the checkpoint in instructjax."""
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from instructjax.convert.saved import load_model

    model = load_model(str(run_dir), dtype="float32")
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, (2, 48)).astype(np.int32)
    ones = np.ones_like(ids)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(np.cumsum(ones, 1) - 1), jnp.asarray(ones)), np.float64)
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids).long()).logits.double().numpy()
    err = rel_err(ours, theirs)
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    return {"logits_rel": err, "argmax_agree": agree, "tolerance": TOLERANCE["float32"],
            "ok": err <= TOLERANCE["float32"] and agree >= 0.99}


# ---- orchestration and the report ----------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def probe() -> dict:
    """The platform and device JAX sees, and the versions, asked in a child process so that this one
    never holds the device."""
    code = ("import jax, json, sys; d = jax.devices()[0]; "
            "print(json.dumps({'platform': jax.default_backend(), 'device': d.device_kind, 'count': jax.device_count(), "
            "'jax': jax.__version__}))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"accelerator_check: JAX does not start: {proc.stderr.strip().splitlines()[-1:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("flax", "optax", "orbax.checkpoint", "transformers", "torch"):
        try:
            module = __import__(name, fromlist=["_"])
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            found[name] = None
    return found


def run_section(name: str, args, small: bool) -> dict:
    """A section in a child process (or several), with its time limit; failures become one line."""
    t0 = time.perf_counter()
    limit = TIMEOUT_S[name] * (SMALL_TIMEOUT_FACTOR if small else 1)
    try:
        if name == "train_step":
            result = _train_step(args, small, limit)
        elif name == "decode":
            jax_side = _child(["--child", "decode_jax", *_decode_args(args, small)], limit,
                              args.out / "decode_jax.log")
            torch_side = _child(["--child", "decode_torch", *_decode_args(args, small)], limit,
                                args.out / "decode_torch.log")
            result = {"jax": jax_side, "torch": torch_side, "ok": "results" in jax_side}
        else:
            result = _child(["--child", name, "--out", str(args.out), *(["--small"] if small else [])],
                            limit, args.out / f"{name}.log")
    except Exception as exc:  # noqa: BLE001  a broken section is reported, the others still run
        result = {"error": _one_line(exc), "ok": False}
    result["seconds"] = time.perf_counter() - t0
    print(f"accelerator_check: {name}: {'ok' if result.get('ok') else 'FAILED ' + result.get('error', '')} "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


def _child(argv: list[str], timeout: int, log: Path) -> dict:
    """Run this script's `--child` mode; its stderr goes to `log` (progress, tracebacks)."""
    with log.open("w") as err:
        try:
            proc = subprocess.run([sys.executable, __file__, *argv], stdout=subprocess.PIPE, stderr=err, text=True,
                                  timeout=timeout, env=jax_environment())
        except subprocess.TimeoutExpired as exc:  # what it finished still counts
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            done = [json.loads(line[len("ROW "):]) for line in out.splitlines() if line.startswith("ROW ")]
            finished = f" after {len(done)} checks" if done else ""
            return {"error": f"stopped at its time limit of {timeout} s{finished}", "ok": False,
                    "rows": [r for r in done if r["kind"] == "value"], "leaks": [r for r in done if r["kind"] == "leak"]}
    proc.stderr = log.read_text()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(error_line(proc.stderr) or f"exit {proc.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def jax_environment() -> dict[str, str]:
    """This process's environment, with the GPU XLA flags where the check runs on a GPU (CHECK_PLATFORM)."""
    from instructjax.core import xla_flags

    env = dict(os.environ)
    return xla_flags.gpu_environment(env) if env.get("CHECK_PLATFORM") == "gpu" else env


def error_line(output: str) -> str:
    """The last exception line of a traceback in `output` (else its last line), at most 300 characters."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Expired)\b", line)]
    return (errors or lines or [""])[-1][:300]


def _decode_args(args, small: bool) -> list[str]:
    model = SMALL_MODEL if small else TINYLLAMA
    sizes = ["--batches", "1,4", "--prompt", "16", "--new-tokens", "8", "--repeats", "1"] if small else \
        ["--batches", "1,32", "--prompt", "128", "--new-tokens", "128", "--repeats", "3"]
    return [*model, *sizes]


def _train_step(args, small: bool, limit: int) -> dict:
    """gpu_mfu.py per shape (TinyLlama, then LLaMA-3.2-3B at full size): the first shape's figures, and every
    shape's under `shapes`. The shapes share the section's time limit."""
    shapes = [SMALL_MODEL + ["--seq", "64", "--batch", "2", "--steps", "2", "--allow-cpu", "--remat", "none"]] if small \
        else [list(shape) for shape in STEP_SHAPES]
    results, deadline = [], time.perf_counter() + limit
    for i, shape in enumerate(shapes):
        summary = Path(args.out) / f"train_step_{i}.json"
        argv = [str(Path(__file__).with_name("gpu_mfu.py")), "--no-append", "--json", str(summary), *shape,
                *args.train_step_args]
        left = deadline - time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            results.append({"error": f"{' '.join(shape[:2])}: stopped at the section's time limit"})
            continue
        if proc.returncode or not summary.exists():
            results.append({"error": error_line(proc.stdout + proc.stderr) or f"gpu_mfu exited {proc.returncode}"})
            continue
        results.append(json.loads(summary.read_text()))
    if "mfu" not in results[0]:
        raise RuntimeError(results[0]["error"])
    return {**results[0], "shapes": results, "ok": all("mfu" in r for r in results)}


def report(found: dict, results: dict, small: bool) -> str:
    """The markdown summary."""
    lines = [f"Device: {found['device']} x{found['count']} ({found['platform']}); jax {found['jax']}, flax "
             f"{found['flax']}, optax {found['optax']}, orbax {found['orbax.checkpoint']}, transformers "
             f"{found['transformers']}, torch {found['torch']}. Size: {'reduced (CPU check)' if small else 'full'}.", ""]
    verdicts = [f"{name}: {'ok' if r.get('ok') else 'FAILED'}" for name, r in results.items()]
    lines += ["**" + "; ".join(verdicts) + "**", ""]
    for name, r in results.items():
        lines.append(f"### {name} ({r['seconds']:.0f} s)")
        lines.append("")
        if "error" in r:
            lines += [f"error: {r['error']}", ""]
            if not r.get("rows"):
                continue
        lines += {"kernels": _kernels_md, "train_step": _train_md, "decode": _decode_md, "real_run": _run_md}[name](r)
        lines.append("")
    return "\n".join(lines)


def _kernels_md(r: dict) -> list[str]:
    rows = []
    for row in r["rows"]:
        b, t, h, kh, d = row["shape"]
        shape = f"{b}x{t}, {h}/{kh} heads, d {d}" + (f", window {row['window']}" if row.get("window") else "") + (
            f", cap {row['softcap']:g}" if row.get("softcap") else "")
        if "error" in row:
            rows.append([row["impl"], row["dtype"], shape, "-", row["error"], "-", "-", "**FAILED**"])
            continue
        f64 = " / ".join(f"{row['vs_float64'][n]:.1e}" for n in ("out", "dq", "dk", "dv"))
        xla = " / ".join(f"{row['vs_xla'][n]:.1e}" for n in ("out", "dq", "dk", "dv")) if row["vs_xla"] else "-"
        rows.append([row["impl"], row["dtype"], shape, row["block"] or "default", row["compiled"], f64, xla,
                     f"<= {row['tolerance']:.0e}: {'ok' if row['ok'] else '**FAILED**'}"])
    out = ["Relative L2 error of out / dq / dk / dv against float64 numpy and against the dense `xla` "
           "implementation in the same dtype (packed rows, documents and the last tile ending mid-tile):", "",
           common.table(["implementation", "dtype", "shape", "tile", "mode", "vs float64", "vs xla", "tolerance"], rows),
           "", "Leak test (another document's keys and values perturbed): largest change of any other output, "
           "largest gradient on any other document's keys and values (both must be exactly 0):", ""]
    out.append(common.table(["implementation", "dtype", "window / cap", "other outputs", "other gradients", ""], [
        [x["impl"], x["dtype"], f"{x.get('window') or '-'} / {x.get('softcap') or '-'}",
         x.get("outside_max_diff", "-"), x.get("grad_outside_max", "-"),
         "ok" if x["ok"] else f"**FAILED** {x.get('error', '')}"] for x in r["leaks"]]))
    return out


def _train_md(r: dict) -> list[str]:
    out = []
    for shape in r.get("shapes", [r]):
        if "error" in shape:
            out += [f"error: {shape['error']}", ""]
            continue
        rows = [[f"instructjax ({shape['attention']} attention)", f"{shape['step_s']:.3f}",
                 f"{shape['tokens_per_s']:,.0f}", f"{shape['mfu']:.1%}"]]
        if "torch_tokens_per_s" in shape:
            rows.append([f"transformers (torch {shape['torch_version']})", f"{shape['torch_step_s']:.3f}",
                         f"{shape['torch_tokens_per_s']:,.0f}", f"{shape['torch_mfu']:.1%}"])
        out += [f"{shape['model']}; peak {shape['peak_tflops']:g} TFLOP/s.", "",
                common.table(["implementation", "s/step", "tokens/s", "MFU"], rows), "",
                f"instructjax / transformers = **{shape.get('ratio', float('nan')):.2f}x** tokens/s (goal >= 1.3x); "
                f"MFU **{shape['mfu']:.1%}** (goal >= 45%).", ""]
    return out[:-1]


def _decode_md(r: dict) -> list[str]:
    ours, theirs = r["jax"]["results"], r["torch"].get("results", {})
    rows = []
    for batch, x in ours.items():
        tokens = int(batch) * r["jax"]["new_tokens"]
        ref = theirs.get(batch)
        rows.append([batch, f"{tokens / x['s']:,.0f}", f"{x['first_call_s']:.1f}",
                     f"{tokens / ref['s']:,.0f}" if ref else "-", f"{ref['s'] / x['s']:.2f}x" if ref else "-"])
    return [f"Greedy decoding, {r['jax']['model']}: prompt {r['jax']['prompt']} tokens, {r['jax']['new_tokens']} new "
            "tokens per row (no early stop), bf16 weights; median of the timed calls.", "",
            common.table(["batch", "instructjax tokens/s", "first call s (compile)", "transformers tokens/s",
                          "ratio"], rows)]


def _run_md(r: dict) -> list[str]:
    e = r["export"]
    reference = "the same run on JAX's CPU platform" if r["cpu_reference"] else "itself (this is the CPU)"
    return [f"`instructjax train --config configs/quickstart.yaml max_steps=20 checkpoint.every=10` on "
            f"{r['platform']} ({r['train_s']:.0f} s): loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}.", "",
            f"- resumed from step 10 (step 20 removed): last loss {r['resumed_last_loss']:.4f}, largest relative "
            f"difference over steps 11-20 {r['resume_max_rel']:.1e} (tolerance {RESUME_TOLERANCE:.0e})",
            f"- against {reference}: last loss {r['cpu_last_loss']:.4f}, largest relative difference over the 20 "
            f"steps {r['cpu_max_rel']:.1e} (tolerance {LOSS_TOLERANCE:.0e})",
            f"- export read by transformers: logits relative error {e['logits_rel']:.1e} (tolerance "
            f"{e['tolerance']:.0e}), argmax agreement {e['argmax_agree']:.1%}",
            f"- {'ok' if r['ok'] else '**FAILED**'}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="where the summary goes (default runs/accelerator_check-TIME)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--size", choices=("auto", "full", "small"), default="auto",
                        help="auto: full on an accelerator, small on the CPU")
    parser.add_argument("--record", action="store_true", help="append the summary to benchmarks/RESULTS.md")
    parser.add_argument("--train-step-args", default="", help="extra gpu_mfu.py arguments, e.g. '--batch 8'")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--small", action="store_true", help=argparse.SUPPRESS)
    for flag, default in (("--layers", 22), ("--hidden", 2048), ("--intermediate", 5632), ("--heads", 32),
                          ("--kv-heads", 4), ("--vocab", 32000), ("--prompt", 128), ("--new-tokens", 128),
                          ("--repeats", 3)):
        parser.add_argument(flag, type=int, default=default, help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="1,32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _run_child(args)

    found = probe()
    os.environ["CHECK_PLATFORM"] = found["platform"]  # the children's XLA flags follow it (jax_environment)
    small = args.size == "small" or (args.size == "auto" and found["platform"] == "cpu")
    args.out = Path(args.out or REPO / "runs" / f"accelerator_check-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.torch = found["torch"] is not None
    args.train_step_args = args.train_step_args.split()
    load_before = common.load_average()
    print(f"accelerator_check: {found['device']} ({found['platform']}), {'reduced' if small else 'full'} size -> "
          f"{args.out}", flush=True)
    results = {}
    for name in args.only.split(","):
        if name not in SECTIONS:
            raise SystemExit(f"accelerator_check: unknown section {name!r}; known: {', '.join(SECTIONS)}")
        if name in ("train_step", "decode", "real_run") and not args.torch:
            results[name] = {"skipped": "torch is not installed", "ok": False, "seconds": 0.0,
                             "error": "skipped: torch is not installed"}
            continue
        results[name] = run_section(name, args, small)
    body = report(found, results, small)
    (args.out / "accelerator_check.md").write_text(body + "\n")
    (args.out / "accelerator_check.json").write_text(json.dumps({"found": found, "small": small, **results},
                                                                indent=1, default=str))
    print(body)
    if args.record:
        common.append_results(f"Accelerator check: {found['device']}", body, load_before=load_before)
    return 0 if all(r.get("ok") for r in results.values()) else 1


def _run_child(args) -> int:
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.child == "kernels":
        result = kernels_section(args.small)
    elif args.child == "decode_jax":
        result = decode_jax(args)
        result.update(new_tokens=args.new_tokens, prompt=args.prompt,
                      model=f"{args.layers} x {args.hidden}, {args.heads}/{args.kv_heads} heads, vocab {args.vocab}")
    elif args.child == "decode_torch":
        result = decode_torch(args)
    else:
        result = real_run(args)
    common.child_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
