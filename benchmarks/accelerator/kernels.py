"""The kernels section: every `model.attention` implementation the platform runs, compiled (interpreted only
off its own platform), on packed GQA rows whose documents and last tile end mid-tile: values and dq/dk/dv
against float64 numpy and the dense XLA implementation, in float32 and bfloat16; and the leak test."""

from __future__ import annotations

import json

from .children import one_line

# relative L2 error ||x - ref|| / ||ref|| allowed against float64: float32 inputs may meet TF32 matmuls on
# GPUs (XLA's default for float32 dots there), bfloat16 keeps 8 bits of mantissa
TOLERANCE = {"float32": 2e-3, "bfloat16": 2e-2}


def kernel_cases(platform: str, small: bool) -> dict:
    """Implementations, shapes and tiles for this platform and size."""
    impls = {"gpu": ["xla", "blockwise", "pallas_gpu", "cudnn"], "tpu": ["xla", "blockwise", "splash"]}.get(
        platform, ["xla", "blockwise", "pallas_gpu", "splash"])
    # a shape is (batch, length, heads, kv heads, head dim, sliding window, soft-cap)
    if small:  # interpret mode: tiles of 64 leave partial last tiles at T=150; splash tiles are 128 wide. One shape,
        # with a window and a soft-cap: the CPU check keeps the section from rotting; every kernel's values, gradients
        # and leaks with and without them at this shape are tests/model/test_attention.py's
        # the leak test in float32 alone (its code is the same in either dtype; each costs a kernel's compile)
        return {"impls": impls, "shapes": [(2, 150, 4, 2, 16, 37, 2.0)],
                "block": {"splash": 128, "default": 64}, "leak_dtypes": ("float32",)}
    # T=600: no tile size divides it; head dims of TinyLlama (64) and LLaMA-7B (128); T=100: a row shorter
    # than one default tile (what scoring and decoding prefill with); a window and a soft-cap (Gemma-2, Mistral:
    # on a GPU our own Pallas kernel). Tiles: each implementation's default.
    return {"impls": impls, "shapes": [(2, 600, 8, 2, 64, None, None), (2, 600, 8, 2, 128, None, None),
                                       (2, 100, 8, 2, 64, None, None), (2, 600, 8, 2, 128, 200, 2.0)], "block": {},
            "leak_dtypes": ("float32", "bfloat16")}


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
                    row.update(error=one_line(exc), ok=False)
                else:
                    names = ("out", "dq", "dk", "dv")
                    row["vs_float64"] = {n: rel_err(x, w) for n, x, w in zip(names, got[impl], want, strict=True)}
                    row["vs_xla"] = ({n: rel_err(x, w) for n, x, w in zip(names, got[impl], got["xla"], strict=True)}
                                     if "xla" in got and impl != "xla" else {})
                    row["ok"] = all(e <= TOLERANCE[dtype] for e in row["vs_float64"].values())
                rows.append(_emit(row))
            if (b, t, h, kh, d, window, softcap) in (cases["shapes"][0], cases["shapes"][-1]) \
                    and dtype in cases["leak_dtypes"]:
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
        return {"kind": "leak", "impl": impl, "dtype": dtype, **options, "error": one_line(exc), "ok": False}
    ok = outside_diff == 0.0 and other_rows_equal and seen > 1e-2 and grad_leak == 0.0 and grad_seen > 0
    return {"kind": "leak", "impl": impl, "dtype": dtype, **options, "outside_max_diff": outside_diff, "change_seen": seen,
            "grad_outside_max": grad_leak, "ok": ok}

