"""The configs beyond the papers, made from a paper's run: LoRA and QLoRA variants (the recipes of the authors'
code: open-instruct's scripts for Tulu, LLaMA-Factory's for seed 003) and Tulu 2's DPO stage after an SFT run.
Each says so in its file's header (`note`); `experiment_grid` places them beside the runs they are made from."""

from __future__ import annotations

import copy

from instructjax.cli.experiment_record import Experiment

# ---- LoRA and QLoRA variants (none of the papers trains adapters: the recipes are their authors' code's) ---------

ALL_LINEAR = "all-linear"  # q, k, v, o, gate, up and down: open-instruct's and LLaMA-Factory's `all`
SEED003_LORA = {  # LLaMA-Factory (seed 003's trainer), examples/train_lora/llama3_lora_sft.yaml
    "model": {"lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ALL_LINEAR}}, "optim": {"lr": 1e-4},
    "note": "LoRA (not in the paper): LLaMA-Factory's llama3_lora_sft.yaml, rank 8, alpha 16, every linear module,\n"
            "lr 1e-4; the data, epochs and schedule are the paper's run's."}
SEED004_LORA = {  # open-instruct's scripts/finetune_lora_with_accelerate.sh (the Tulu authors' code)
    "model": {"lora": {"rank": 256, "alpha": 256, "dropout": 0.1, "targets": ALL_LINEAR}}, "optim": {"lr": 1e-4},
    "note": "LoRA (not in the paper): open-instruct's finetune_lora_with_accelerate.sh, rank 256, alpha 256,\n"
            "dropout 0.1 on q, k, v, o, gate, up and down, lr 1e-4 linear; the data, epochs and batch are the paper's."}
SEED004_QLORA = {  # open-instruct's scripts/finetune_qlora_with_accelerate.sh (70B, NF4)
    "model": {"lora": {"rank": 64, "alpha": 16, "dropout": 0.1, "targets": ALL_LINEAR}, "quantize_base": "nf4"},
    "optim": {"lr": 1e-4, "micro_batches": 8},
    "note": "QLoRA (not in the paper): open-instruct's finetune_qlora_with_accelerate.sh, NF4 base, rank 64, alpha 16,\n"
            "dropout 0.1 on every linear module, lr 1e-4 linear; 8 micro-batches fit a v4-8 (benchmarks/RESULTS.md).\n"
            "The data, epochs and batch are the paper's."}


def with_adapter(base: Experiment, suffix: str, recipe: dict) -> Experiment:
    """`base` trained with adapters: `recipe`'s model and optim keys over the run's, its own name and run dir."""
    config = copy.deepcopy(base.config)
    name = f"{config['name']}_{suffix}"
    config["name"], config["run_dir"] = name, config["run_dir"].rsplit("/", 1)[0] + f"/{name}"
    config["model"].update(copy.deepcopy(recipe["model"]))
    config["optim"].update(recipe["optim"])
    label = {"lora": "LoRA", "qlora": "QLoRA"}[suffix]
    return Experiment(f"{base.path.rsplit('/', 1)[0]}/{name}.yaml", f"{base.title}, {label}", config,
                      f"{base.note}\n{recipe['note']}", {**base.tags, "adapter": suffix})


# ---- preference tuning after SFT (Tulu 2's DPO stage; none of the papers) ----------------------------------------

SEED004_DPO_STARTS = {("tulu_human_gpt", "llama2-7b"), ("tulu_human_gpt", "llama2-13b")}  # Tulu-1.1: LLaMA-2, as Tulu 2
SEED004_DPO = {  # open-instruct's Tulu 2 DPO script (scripts/dpo_train_with_accelerate.sh)
    "data": {"mixture": "preference", "seq_len": 4096, "global_batch": 32},
    "optim": {"lr": 5e-7, "warmup_ratio": 0.1, "epochs": 3},
    "objective": {"loss": "dpo", "dpo": {"beta": 0.1, "reference": "cached"}},
    "note": "DPO (not in the paper): Tulu 2's stage after SFT, open-instruct's dpo_train_with_accelerate.sh: beta 0.1,\n"
            "lr 5e-7 linear with 10% warmup, 3 epochs, 32 pairs a step, each side cut at 2048 tokens (a row holds a\n"
            "pair: seq_len 4096), on UltraFeedback binarized (HuggingFaceH4's train_prefs; Tulu 2 used allenai's\n"
            "cleaned copy). It starts from the SFT run whose directory its model.init_from names; the reference is\n"
            "that run's model, its log-probs cached before the first step."}


def dpo_stage(sft: Experiment) -> Experiment:
    """The preference stage that continues `sft` (its run dir as model.init_from), `SEED004_DPO`'s recipe."""
    config = copy.deepcopy(sft.config)
    name = f"{config['name']}_dpo"
    config["name"], config["run_dir"] = name, config["run_dir"].rsplit("/", 1)[0] + f"/{name}"
    config["model"]["init_from"] = sft.config["run_dir"]
    config["data"].update(SEED004_DPO["data"])
    config["optim"].update(SEED004_DPO["optim"])
    config = {**{k: v for k, v in config.items() if k != "eval"}, "objective": dict(SEED004_DPO["objective"]),
              "eval": config["eval"]}
    return Experiment(f"{sft.path.rsplit('/', 1)[0]}/{name}.yaml", f"{sft.title}, then DPO (Tulu 2)", config,
                      SEED004_DPO["note"], {**sft.tags, "objective": "dpo", "start": sft.config["run_dir"]})
