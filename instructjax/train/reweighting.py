"""A run with `data.reweighting` (DoReMi, train/objectives/doremi.py): the rates its data is drawn at (where the
weights start, and what the loss divides them by), its reference (the reference run's newest checkpoint: checked to
be the same model and tokenizer, one line otherwise; its log-probs cached as a preference run's are, train/reference.py)
and what it leaves in RUN_DIR: `doremi.yaml`, a mixture of the weights' running mean (DoReMi's answer: the rates a
full run trains on), and `doremi.png`, the weights at each logged step."""

from __future__ import annotations

import json

import numpy as np
import yaml

from instructjax.core import storage
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.data.blends import specs
from instructjax.model.config import DecoderConfig

MIXTURE_FILE = "doremi.yaml"
PLOT_FILE = "doremi.png"
SUFFIX = "_doremi"  # the proposed mixture's name: the run's mixture's, with this after it


def sampling(stream) -> np.ndarray:
    """Each task's share of the examples the run draws: a rate-mode mixture's rates, an epoch-mode one's subsets."""
    drawn = (np.asarray(stream.rates, np.float64) if stream.rate_mode
             else np.asarray([len(examples) for examples in stream.examples], np.float64))
    return (drawn / drawn.sum()).astype(np.float32)


def check_reference(config: RunConfig, model: DecoderConfig, tokenizer, sources: list[str]) -> None:
    """The reference run holds an intact checkpoint, trained with this run's tokenizer on its tasks (`sources`), of a
    model shaped as this run's."""
    import jax
    from flax import nnx

    from instructjax.core.checkpoint import read_meta, read_tokenizer
    from instructjax.data.encoding.tokenizer import Tokenizer, materialize
    from instructjax.model.decoder import Decoder

    where = config.data.reweighting.reference
    if model.lora is not None:
        raise ConfigError("data.reweighting: DoReMi's proxy trains the whole model; model.lora is not supported")
    try:
        stored, _, _ = read_meta(where, contents=False)
    except (FileNotFoundError, ConfigError) as e:
        raise ConfigError(f"data.reweighting.reference {where}: no intact checkpoint to read ({e})") from None

    def shapes(decoder: DecoderConfig) -> dict:
        state = nnx.state(nnx.eval_shape(lambda: Decoder(decoder, rngs=nnx.Rngs(0))), nnx.Param)
        return jax.tree.map(lambda a: tuple(a.shape), nnx.to_pure_dict(state))

    item = read_tokenizer(where)
    if item is not None and Tokenizer.load(materialize(item["files"])).fingerprint != tokenizer.fingerprint:
        raise ConfigError(f"data.reweighting.reference {where}: trained with another tokenizer than this run's "
                          f"{tokenizer.words}")
    tasks = _reference_tasks(where)
    if tasks is not None and tasks != sorted(specs.base_name(s) for s in sources):
        raise ConfigError(f"data.reweighting.reference {where}: trained on the tasks {', '.join(tasks)}, not this "
                          f"run's {', '.join(sorted(specs.base_name(s) for s in sources))} (its domains are theirs)")
    theirs = DecoderConfig.from_dict(stored).replace(scan_layers=model.scan_layers)
    if theirs.lora is not None or shapes(theirs) != shapes(model.replace(lora=None)):
        raise ConfigError(f"data.reweighting.reference {where}: its model is not this run's (the reference and the "
                          "proxy share one architecture; a LoRA reference is not supported)")


def _reference_tasks(where: str) -> list[str] | None:
    """The tasks of the reference run's mixture, as its RUN_DIR/config.yaml names it (None without one), bound in a
    context of its own (DoReMi's reference defines the run's mixture name at other rates)."""
    from instructjax.core.config import load_config
    from instructjax.core.context import Context, current
    from instructjax.train import setup as run_setup

    path = storage.join(where, "config.yaml")
    if not storage.path(path).is_file():
        return None
    with Context(parent=current()):
        reference = load_config(path)
        resolved = run_setup.checked_mixture(reference, run_setup.run_registry(reference))
        return None if resolved is None else sorted(specs.base_name(t) for t in resolved.tasks)


def identity(config: RunConfig) -> dict:
    """What names the cached log-probs: the reference run's newest intact step and its digest."""
    from instructjax.core.checkpoint import base_reference

    return {"doremi": base_reference(config.data.reweighting.reference)}


def reference_params(config: RunConfig, model: DecoderConfig, build):
    """The reference run's parameters, placed as the run's."""
    from instructjax.convert.saved import load_params_as

    return load_params_as(config.data.reweighting.reference, model, shardings=build.param_shardings)


def carried_state(opt_state) -> dict[str, list[float]]:
    """The weights, their running mean and the scores an optimizer state carries, as lists."""
    import jax

    from instructjax.train import doremi

    state = jax.device_get(doremi.carried(opt_state).domains)
    return {"weights": state.weights.tolist(), "average": state.average.tolist(), "scores": state.scores.tolist(),
            "updates": int(state.updates)}


def write_outputs(run_dir, config: RunConfig, sources: list[str], state: dict) -> None:
    """RUN_DIR/doremi.yaml (a `define:` mixture of the weights' running mean, named in `data.mixture`: a run config
    fragment to merge into the full run's) and RUN_DIR/doremi.png (the weights at each logged step)."""
    name = f"{specs.base_name(config.data.mixture)}{SUFFIX}"
    rates = {specs.base_name(s): float(w) for s, w in zip(sources, state["average"], strict=True)}
    fragment = {"define": {"mixtures": {name: {"mode": "rate", "rates": rates}}}, "data": {"mixture": name},
                "doremi": {"updates": state["updates"], "weights": dict(zip(rates, state["weights"], strict=True))}}
    storage.write_text(storage.join(str(run_dir), MIXTURE_FILE), yaml.safe_dump(fragment, sort_keys=False))
    _plot(run_dir, [specs.base_name(s) for s in sources])


def logged_weights(run_dir) -> tuple[list[int], np.ndarray]:
    """(steps, weights [steps, sources]) of RUN_DIR/metrics.jsonl's lines that log them."""
    path = storage.path(storage.join(str(run_dir), "metrics.jsonl"))
    steps, rows = [], []
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        weights = [v for k, v in record.items() if k.startswith("doremi/weight/")]
        if weights:
            steps.append(record["step"])
            rows.append(weights)
    return steps, np.asarray(rows, np.float64)


def _plot(run_dir, names: list[str]) -> None:
    import tempfile
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, weights = logged_weights(run_dir)
    if not steps:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, name in enumerate(names):
        ax.plot(steps, weights[:, k], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("domain weight")
    ax.set_title("DoReMi's domain weights")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as local:
        fig.savefig(Path(local) / PLOT_FILE, dpi=100)
        plt.close(fig)
        storage.write_bytes(storage.join(str(run_dir), PLOT_FILE), (Path(local) / PLOT_FILE).read_bytes())
