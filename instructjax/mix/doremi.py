"""Moved: DoReMi's online domain weights are a training step's (`instructjax.train.doremi`); this name stays an alias
for code that imports it from here."""

from instructjax.train.doremi import (  # noqa: F401
    EPS,
    ETA,
    DomainWeights,
    Reweighting,
    carried,
    carrier,
    domain_scores,
    update,
    weighted_loss,
    with_carried,
)
