"""The accelerator check's markdown summary: the device and versions, a verdict per section, and each
section's table (kernels' errors and leak test, the step's MFU, decoding tokens/s, the real run's losses)."""

from __future__ import annotations

import common

from .real_run import LOSS_TOLERANCE, RESUME_TOLERANCE


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
    lines = [f"Greedy decoding, {r['jax']['model']}: prompt {r['jax']['prompt']} tokens, {r['jax']['new_tokens']} "
             "new tokens per row (no early stop), bf16 weights; median of the timed calls.", "",
             common.table(["batch", "instructjax tokens/s", "first call s (compile)", "transformers tokens/s",
                           "ratio"], rows)]
    by_chunk = r["jax"].get("by_chunk") or {}
    if by_chunk:
        chunk_rows = [[chunk, batch, f"{int(batch) * r['jax']['new_tokens'] / x['s']:,.0f}", f"{x['first_call_s']:.1f}"]
                      for chunk, per_batch in by_chunk.items() for batch, x in per_batch.items()]
        lines += ["", "The batcher with other decode steps per device call (`chunk`; the table above is 8):", "",
                  common.table(["chunk", "batch", "instructjax tokens/s", "first call s"], chunk_rows)]
    return lines


def _run_md(r: dict) -> list[str]:
    e = r["export"]
    reference = "the same run on JAX's CPU platform" if r["cpu_reference"] else "itself (this is the CPU)"
    n = r["steps"]
    return [f"`instructjax train --config configs/quickstart.yaml max_steps={n} checkpoint.every={n // 2}` on "
            f"{r['platform']} ({r['train_s']:.0f} s): loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}.", "",
            f"- resumed from step {n // 2} (step {n} removed): last loss {r['resumed_last_loss']:.4f}, largest "
            f"relative difference over steps {n // 2 + 1}-{n} {r['resume_max_rel']:.1e} (tolerance "
            f"{RESUME_TOLERANCE:.0e})",
            f"- against {reference}: last loss {r['cpu_last_loss']:.4f}, largest relative difference over the {n} "
            f"steps {r['cpu_max_rel']:.1e} (tolerance {LOSS_TOLERANCE:.0e})",
            f"- export read by transformers: logits relative error {e['logits_rel']:.1e} (tolerance "
            f"{e['tolerance']:.0e}), argmax agreement {e['argmax_agree']:.1%}",
            f"- {'ok' if r['ok'] else '**FAILED**'}"]
