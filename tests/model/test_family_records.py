"""Each family is one record (instructjax/model/families/) holding its switches: each switch is a DecoderConfig field
given a value it accepts, every record is found by its HF names, and no two records claim one HF architecture or one
split's name."""

from __future__ import annotations

import dataclasses

from instructjax.convert.hf_names import SPLITS
from instructjax.model.config import FAMILIES, DecoderConfig
from instructjax.model.families import RECORDS, family_of
from instructjax.model.presets import PRESETS, preset


def test_every_family_has_its_switches_and_one_record():
    fields = {f.name for f in dataclasses.fields(DecoderConfig)}
    tiny = preset("tiny")
    for name, record in RECORDS.items():
        assert record.name == name and set(record.switches) <= fields - {"family"}, record.switches
        dataclasses.replace(tiny, family=name, **record.switches)  # DecoderConfig checks every switch's value
        assert family_of({"architectures": [record.architecture]}) == name
        assert family_of({"model_type": record.model_type}) == name
    assert len({r.architecture for r in RECORDS.values()}) == len(RECORDS)
    assert len(SPLITS) == sum(len(r.splits) for r in RECORDS.values())


def test_every_preset_names_a_family_and_carries_its_switches():
    for values in PRESETS.values():
        switches = FAMILIES[values.get("family", "llama")]
        assert {k: values[k] for k in switches} == switches
