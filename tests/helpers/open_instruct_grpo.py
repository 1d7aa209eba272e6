"""open-instruct's GRPO functions, read from the pinned copy in tests/assets/open_instruct/ (its README names the
commit) at test time: the independent reference of train/objectives/grpo.py.

Only the named top-level functions and classes of a file are compiled (their modules import ray, deepspeed,
vLLM...), with their annotations and decorators dropped (they name types of modules not loaded; `torch.compile`);
what they call from elsewhere is passed in `namespace`."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import numpy as np
import torch

PINNED = Path(__file__).resolve().parents[1] / "assets" / "open_instruct"


def _strip_annotations(node: ast.AST) -> None:
    """Annotations and decorators dropped (`torch.compile` of log_softmax_and_gather: the same computation, eager)."""
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n.returns, n.decorator_list = None, []
            for arg in (*n.args.args, *n.args.kwonlyargs, *n.args.posonlyargs, n.args.vararg, n.args.kwarg):
                if arg is not None:
                    arg.annotation = None


def pinned(file: str, names: tuple[str, ...], namespace: dict | None = None) -> dict:
    """The top-level definitions `names` of the pinned `file`, executed in `namespace` (returned)."""
    path = PINNED / file
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    assert sorted(n.name for n in nodes) == sorted(names), f"{file} no longer defines {names}"
    for n in nodes:
        _strip_annotations(n)
    namespace = {"torch": torch, "np": np, **(namespace or {})}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace


def grpo_functions() -> types.SimpleNamespace:
    """compute_grpo_loss, forward_for_logprobs, GRPOLossType (grpo_utils.py), estimate_kl, log_softmax_and_gather
    (model_utils.py), masked_mean (rl_utils.py)."""
    import enum

    kl = pinned("model_utils.py", ("estimate_kl",))
    mean = pinned("rl_utils.py", ("masked_mean",))
    loss = pinned("grpo_utils.py", ("GRPOLossType", "compute_grpo_loss"),
                  {"enum": enum, "model_utils": types.SimpleNamespace(estimate_kl=kl["estimate_kl"])})
    gather = pinned("model_utils.py", ("log_softmax_and_gather",))["log_softmax_and_gather"]
    forward = pinned("grpo_utils.py", ("forward_for_logprobs",),
                     {"model_utils": types.SimpleNamespace(log_softmax_and_gather=gather)})["forward_for_logprobs"]
    return types.SimpleNamespace(compute_grpo_loss=loss["compute_grpo_loss"], estimate_kl=kl["estimate_kl"],
                                 masked_mean=mean["masked_mean"], GRPOLossType=loss["GRPOLossType"],
                                 forward_for_logprobs=forward)


def rho_correction():
    """compute_rho_correction (grpo_utils.py) with what it calls: (old, sampler, mask, advantages, config) ->
    RhoCorrection(weights, metrics, histogram_metrics)."""
    from dataclasses import dataclass, field

    return pinned("grpo_utils.py", ("RhoCorrection", "_rho_drop_masks", "_sequence_level_mean",
                                    "compute_rho_correction"), {"dataclass": dataclass, "field": field}
                  )["compute_rho_correction"]


def advantages(scores: np.ndarray, samples: int, normalization: str) -> np.ndarray:
    """The advantages open-instruct's data preparation loop computes from a rollout's scores (data_loader.py,
    `DataPreparationActor._data_preparation_loop`: its statements from `scores = np.array(batch.scores)` through
    the `advantage_normalization_type` branch, run as written)."""
    path = PINNED / "data_loader.py"
    source = path.read_text()
    tree = ast.parse(source)
    loop = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_data_preparation_loop")
    body = next(n for n in ast.walk(loop) if isinstance(n, (ast.While, ast.For)) and any(
        "mean_grouped_rewards" in ast.unparse(s) for s in n.body)).body
    start = next(i for i, s in enumerate(body) if ast.unparse(s).startswith("scores = np.array(batch.scores)"))
    end = next(i for i, s in enumerate(body) if isinstance(s, ast.If) and "advantage_normalization_type" in
               ast.unparse(s.test))
    config = types.SimpleNamespace(num_samples_per_prompt_rollout=samples, advantage_normalization_type=normalization)
    namespace = {"np": np, "self": types.SimpleNamespace(config=config),
                 "batch": types.SimpleNamespace(scores=list(scores))}
    exec(compile(ast.Module(body=body[start:end + 1], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace["advantages"]
