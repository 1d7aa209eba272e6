"""Where a sequence too long for a device is refused before any weight is read (eval/placement.py): one line that
names a mesh that holds it, checked against a count of the cache's bytes by hand; a `context` axis, which splits
training rows, refused for generation with the fsdp mesh that takes its devices."""

from __future__ import annotations

import re

import pytest

from instructjax.core.errors import ConfigError
from instructjax.eval import placement
from instructjax.model.presets import preset

GIB = 2**30


def one_sequence_by_hand(config, tensor: int) -> int:
    """Keys and values of every layer for one full-context sequence, kv heads split over `tensor`."""
    return 2 * config.num_layers * config.max_position_embeddings * config.num_kv_heads // tensor \
        * config.head_dim * 2  # bfloat16


def test_a_sequence_too_long_for_a_device_names_the_mesh_that_holds_it():
    config = placement.eval_config(preset("tiny", num_kv_heads=4, max_position_embeddings=2**22), "bfloat16")
    caches = {t: one_sequence_by_hand(config, t) for t in (1, 2, 4)}
    memory = (caches[2] + caches[4]) // 2  # one sequence's cache fits over 4 tensor devices, not over 2
    with pytest.raises(ConfigError) as e:
        placement.check_fits(config, {"data": 8, "fsdp": 1, "tensor": 1}, where="model", memory=memory)
    line = str(e.value)
    assert "\n" not in line and "one 4194304-token sequence" in line
    named = dict((axis, int(n)) for axis, n in re.findall(r"(\w+)=(\d+)", line.split("--mesh ")[1].split(" ")[0]))
    assert named == {"data": 1, "fsdp": 2, "tensor": 4}, line
    placement.check_fits(config, named, where="model", memory=memory)  # the mesh named holds it

    with pytest.raises(ConfigError, match="no mesh of these 8 devices holds it"):
        placement.check_fits(config, {"data": 1, "fsdp": 8, "tensor": 1}, where="model", memory=caches[4] // 4)


def test_a_context_axis_is_refused_for_generation_in_one_line():
    config = placement.eval_config(preset("tiny"), "float32")
    with pytest.raises(ConfigError) as e:
        placement.eval_mesh(config, {"fsdp": 2, "context": 4}, slots=8, where="runs/long")
    line = str(e.value)
    assert "\n" not in line and line.endswith("--mesh data=1,fsdp=8,tensor=1"), line
