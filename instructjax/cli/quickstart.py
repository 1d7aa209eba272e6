"""`instructjax quickstart`: the main job on built-in data, end to end, in minutes on a CPU.

The data pipeline on the built-in A/C/P blend (stats, a preview); a tiny LLaMA trained on it with
the shipped configs/quickstart.yaml (metrics, TensorBoard, loss.png and checkpoints in a fresh run_dir); its
export to Hugging Face weights; lm-evaluation-harness on that export, offline.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import time

from instructjax.cli import data as commands
from instructjax.cli import load_run_config
from instructjax.core import stopping, storage
from instructjax.core.errors import ConfigError
from instructjax.core.shipped import configs_dir, data_root, offline_tasks_dir
from instructjax.core.stopping import EXIT_PREEMPTED
from instructjax.eval.harness import run_lm_eval

QUICKSTART_CONFIG = configs_dir() / "quickstart.yaml"


def register(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="the main job on built-in data and a tiny model")
    p.add_argument("--config", default=str(QUICKSTART_CONFIG), help="the quickstart config")
    p.add_argument("--resume", action="store_true", help="continue an interrupted quickstart run")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. max_steps=50")
    p.set_defaults(func=run)


def run(args) -> int:
    with stopping.listening():  # Ctrl-C saves the step in flight, as `train` does
        return _quickstart(args)


def _quickstart(args) -> int:
    evaluation_needs("accelerate")  # before minutes of training, not after
    common = dict(name=None, config=args.config, data_files=None, on_bad_row=None, template=None,
                  max_length=None, json=False)  # fmt: skip
    print("== data: the built-in A/C/P blend with Mosaic-IT ==")
    commands.run_stats(argparse.Namespace(**common, seq_len=None, global_batch=None))
    commands.run_preview(argparse.Namespace(**common, n=1))

    from instructjax.train.trainer import train

    overrides = list(args.overrides)
    if not args.resume and not any(o.startswith("run_dir=") for o in overrides):
        overrides.append(f"run_dir={load_run_config(args.config).run_dir}-{time.strftime('%Y%m%d-%H%M%S')}")
    config = load_run_config(args.config, overrides)
    print(f"== train: {config.model.preset} LLaMA, {config.max_steps} steps -> {config.run_dir} ==")
    start = time.perf_counter()
    result = train(config, resume=args.resume)
    if result.preempted:
        print(f"stopped: `instructjax quickstart --resume run_dir={config.run_dir}` continues")
        return EXIT_PREEMPTED
    losses = [result.losses[s] for s in sorted(result.losses)]
    if losses:
        print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps, {time.perf_counter() - start:.0f}s; "
              f"curves: {config.run_dir}/loss.png, metrics: {config.run_dir}/metrics.jsonl")
    export_and_evaluate(config.run_dir)
    return 0


def evaluation_needs(package: str) -> None:
    """The quickstart's last step runs lm-eval's hf backend, which imports `package`: an install without the `eval`
    extra is told so in one line before anything runs."""
    try:
        importlib.import_module(package)
    except ModuleNotFoundError:
        raise ConfigError(f"the quickstart evaluates with lm-eval's hf backend, which needs the `{package}` "
                          "package: pip install 'instructjax[eval]' (or `make quickstart`, which installs it)") from None


def export_and_evaluate(run_dir: str) -> None:
    """Export the run to Hugging Face weights and score them with lm-evaluation-harness (hf backend)
    on the small offline tasks shipped in instructjax/eval/offline_tasks (nothing is downloaded)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from instructjax.convert.saved import export_checkpoint

    hf_dir = storage.join(run_dir, "hf")  # local, or in a bucket (run_dir=gs://...)
    print(f"== export: Hugging Face safetensors + tokenizer + chat template -> {hf_dir} ==")
    export_checkpoint(run_dir, hf_dir)
    hf_dir = hf_dir if storage.is_remote(hf_dir) else str(storage.path(hf_dir).absolute())  # read from data_root
    print("== evaluate: lm-evaluation-harness, hf backend, offline tasks ij_mc and ij_rolling ==")
    with contextlib.chdir(data_root()):  # the task files name their data relative to the package's folder
        results = run_lm_eval(hf_dir, ["ij_mc", "ij_rolling"], backend="hf", include_path=str(offline_tasks_dir()))
    for task, metrics in results["results"].items():
        shown = {k.split(",")[0]: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        print(f"{task}: {shown}")
