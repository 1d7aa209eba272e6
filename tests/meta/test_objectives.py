"""The objectives' two halves name each other: every objective the config reads (core/objectives.py `OPTIONS`) has
its class in the trainer's registry (train/objectives `OBJECTIVES`) and no other, and what an objective's options
declare (its data, its reference) is what its class computes on."""

from __future__ import annotations

from instructjax.core.config import PAIR_LOSSES, load_config
from instructjax.core.objectives import OPTIONS, NoReference, Pairs, Rollouts
from instructjax.train.objectives import OBJECTIVES, objective_for
from instructjax.train.objectives.grpo import GRPO
from instructjax.train.objectives.pairs import PairObjective


def test_each_objective_the_config_reads_has_its_class_and_no_other():
    assert list(OBJECTIVES) == list(OPTIONS)
    for loss, cls in OBJECTIVES.items():
        assert cls.options is OPTIONS[loss]
        objective = objective_for(load_config(None, [f"objective.loss={loss}"]))
        assert type(objective) is cls and isinstance(objective.options, OPTIONS[loss]) and objective.name == loss


def test_what_the_options_declare_is_what_the_class_computes_on():
    """Pairs: the classes that split rows into pairs (`PairObjective`); rollouts: the one whose batches carry
    advantages; a reference: the loss reads the reference's log-probs."""
    assert set(PAIR_LOSSES) == {loss for loss, cls in OBJECTIVES.items() if issubclass(cls, PairObjective)}
    assert {loss for loss, o in OPTIONS.items() if o.data is Pairs} == set(PAIR_LOSSES)
    assert {loss for loss, o in OPTIONS.items() if o.data is Rollouts} == {
        loss for loss, cls in OBJECTIVES.items() if issubclass(cls, GRPO)}
    for loss in OPTIONS:
        objective = objective_for(load_config(None, [f"objective.loss={loss}"]))
        assert ("reference_logps" in objective.features()) == objective.reference.in_batch
        assert (objective.reference is NoReference) == (loss in ("sft", "simpo", "orpo"))
