"""The objectives a run can train (`objective.loss`), each a plug-in of the one step (`base.Objective`;
train/step.py `make_step`). Adding one: its options in core/objectives.py (what the config reads, the data it trains
on, the reference it compares with) and their line in `OPTIONS` there; its module here and its line in `OBJECTIVES`
below; its tests (docs/architecture.md, "adding an objective")."""

from __future__ import annotations

from instructjax.core.config import RunConfig
from instructjax.train.objectives.base import Objective
from instructjax.train.objectives.doremi import DoReMi
from instructjax.train.objectives.grpo import GRPO
from instructjax.train.objectives.orpo import ORPO
from instructjax.train.objectives.pairs import DPO, DPONorm, SimPO
from instructjax.train.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {o.options.loss: o for o in (SFT, DPO, DPONorm, SimPO, ORPO, GRPO)}


def objective_for(config: RunConfig, num_sources: int = 1) -> Objective:
    """The objective `config.objective.loss` names, for a mixture of `num_sources` tasks (SFT with
    `data.reweighting`: DoReMi's proxy)."""
    if config.data.reweighting is not None:
        return DoReMi(config, num_sources)
    return OBJECTIVES[config.objective.loss](config, num_sources)


def __getattr__(name: str):
    if name == "REFERENCES":  # the reference's kinds are types now: an old import names them
        raise ImportError("instructjax.train.objectives.REFERENCES moved: the kinds of reference are the types of "
                          "instructjax.core.objectives (NoReference, LiveParams, StoredLogProbs, RolloutLogProbs)")
    raise AttributeError(f"module 'instructjax.train.objectives' has no attribute {name!r}")
