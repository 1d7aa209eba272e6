"""Each family is one record (instructjax/convert/families/) beside its switches in model/config.py's FAMILIES:
every family has both, under the same name, and no two records claim one HF architecture or one split's name."""

from __future__ import annotations

from instructjax.convert.families import RECORDS, family_of
from instructjax.convert.hf_names import SPLITS
from instructjax.model.config import FAMILIES, PRESETS


def test_every_family_has_its_switches_and_one_record():
    assert list(RECORDS) == list(FAMILIES)
    for name, record in RECORDS.items():
        assert record.name == name and record.switches is FAMILIES[name]
        assert family_of({"architectures": [record.architecture]}) == name
        assert family_of({"model_type": record.model_type}) == name
    assert len({r.architecture for r in RECORDS.values()}) == len(RECORDS)
    assert len(SPLITS) == sum(len(r.splits) for r in RECORDS.values())


def test_every_preset_names_a_family_and_carries_its_switches():
    for values in PRESETS.values():
        switches = FAMILIES[values.get("family", "llama")]
        assert {k: values[k] for k in switches} == switches
