"""Where a grpo run's rollout engine decodes (`objective.grpo.rollout_devices`): on the trainer's own mesh (0, the
default), or on a mesh of its own, the last rollout_devices / hosts of each host's devices (Tunix's disaggregated
rollout, open-instruct's vLLM workers), the learner on the rest, each update's parameters sent over
(`Rollouts.engine_params`)."""

from __future__ import annotations

from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.train.objectives.grpo import GRPO


def split_devices(devices: list, config: RunConfig) -> tuple[list, list]:
    """(the learner's devices, the rollout engine's): the last `objective.grpo.rollout_devices` / hosts of each host's
    devices the engine's (none: it decodes on the learner's); one line where that leaves a host none to learn on."""
    count = config.objective.options.rollout_devices if config.objective.rollouts else 0
    if not count:
        return devices, []
    hosts = sorted({d.process_index for d in devices})
    each, rest = divmod(count, len(hosts))
    learner, engine = [], []
    for host in hosts:
        mine = [d for d in devices if d.process_index == host]
        if rest or each >= len(mine):
            raise ConfigError(f"objective.grpo.rollout_devices={count}: the engine takes the same share of each of the "
                              f"{len(hosts)} hosts' {len(mine)} devices and leaves each some to learn on: at most "
                              f"{len(hosts) * (len(mine) - 1)}, a multiple of {len(hosts)}")
        learner += mine[: len(mine) - each]
        engine += mine[len(mine) - each:]
    return learner, engine


def split_topology(topology, config: RunConfig) -> tuple:
    """(the learner's part of TPU slice `topology`, the rollout engine's): `split_devices` of its devices as libtpu
    describes them, each part a `Topology` of its own (`part`: its devices' positions in the slice)."""
    import dataclasses

    from instructjax.train.compile import slice_devices

    devices = slice_devices(topology)
    learner, engine = split_devices(devices, config)
    position = {d.id: i for i, d in enumerate(devices)}

    def part(chosen: list, what: str):
        return dataclasses.replace(topology, name=f"{topology.name} ({what}: {len(chosen)} devices)",
                                   devices=len(chosen), part=tuple(position[d.id] for d in chosen))

    return part(learner, "learner"), part(engine, "rollout engine")


def engine_mesh(devices: list, config: RunConfig, model):
    """The rollout engine's own mesh over `devices` (fsdp over them all; None for none), one line where a device of
    it cannot hold the engine's share (`GRPO.engine_mesh_bytes`)."""
    if not devices:
        return None
    from instructjax.core.sharding import make_mesh
    from instructjax.train.memory import state_memory, usable_bytes
    from instructjax.train.topology import GIB, local_topology

    mesh = make_mesh({"data": 1, "fsdp": -1}, devices)
    sizes = dict(mesh.shape)
    needed = GRPO(config).engine_mesh_bytes(model, sizes, config.data.seq_len, state_memory(model, sizes)["param_bytes"])
    if needed > usable_bytes(local_topology()):
        raise ConfigError(f"objective.grpo.rollout_devices={len(devices)}: the rollout engine needs about "
                          f"{needed / GIB:.1f} GiB a device on its {len(devices)} devices (its parameters, KV cache and "
                          f"steps), more than a device here has ({usable_bytes(local_topology()) / GIB:.1f} GiB): give "
                          "it more devices")
    return mesh
