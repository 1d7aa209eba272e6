"""`instructjax mix train SWARM_DIR --packed K`: a swarm's proxies trained K at a time, each pack in one vmapped
step (train/packed.py: each proxy still its own run, saving, resuming and logging in its own run directory).

    instructjax mix train SWARM_DIR [--packed K]

The proxies are weights.csv's rows in order (`mix swarm`). A proxy whose run is done (its DONE marker stands for its
config, as `sweep` reads it) is skipped; one with checkpoints resumes, packed with the others that saved the same
step; the rest start fresh, K to a pack (the last pack may hold fewer). `--packed 1` trains them one after another.
`mix swarm ... --packed K` writes the swarm and then trains it so.
"""

from __future__ import annotations

from instructjax.core import storage
from instructjax.core.errors import ConfigError


def add_parser(sub) -> None:
    """`mix train`'s arguments (on `instructjax mix`'s subparsers)."""
    p = sub.add_parser("train", help="train a swarm's proxies, K at a time stacked in one step (--packed K)")
    p.add_argument("swarm", metavar="SWARM_DIR", help="a directory `mix swarm` wrote (its weights.csv)")
    p.add_argument("--packed", type=int, default=1, metavar="K", help="proxies a step trains side by side (default 1)")
    p.set_defaults(func=run_train)


def packs(swarm: str, packed: int) -> list[tuple[list, bool]]:
    """(the configs of a pack, whether they resume) for the proxies still to train: resumed ones by their saved
    step, then the fresh ones, `packed` to a pack."""
    from instructjax.cli import load_run_config
    from instructjax.cli.mix_table import WEIGHTS, read_proxies
    from instructjax.cli.sweep_stages import trained_step
    from instructjax.cli.train import has_checkpoint
    from instructjax.core.checkpoint import read_meta

    if packed < 1:
        raise ConfigError(f"--packed must be at least 1, got {packed}")
    fresh, saved = [], {}
    for row in read_proxies(storage.join(swarm, WEIGHTS))[0]:
        config = load_run_config(storage.join(swarm, row["config"]))
        if trained_step(config) is not None:
            continue
        if has_checkpoint(config.run_dir):
            saved.setdefault(read_meta(config.run_dir, contents=False)[2], []).append(config)
        else:
            fresh.append(config)
    groups = [(group, True) for step in sorted(saved) for group in _chunks(saved[step], packed)]
    return groups + [(group, False) for group in _chunks(fresh, packed)]


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def train_swarm(swarm: str, packed: int) -> int:
    """Train what `packs` gives: 0, or EXIT_PREEMPTED where a signal stopped a pack (its step saved)."""
    from instructjax.core.stopping import EXIT_PREEMPTED
    from instructjax.train.packed import train_packed

    done = 0
    for group, resume in packs(swarm, packed):
        names = ", ".join(storage.path(c.run_dir).name for c in group)
        print(f"mix train: {'resuming' if resume else 'training'} {len(group)} proxies in one step: {names}",
              flush=True)
        if any(r.preempted for r in train_packed(group, resume=resume)):
            print(f"mix train: stopped after {done} proxies; `mix train {swarm}` goes on", flush=True)
            return EXIT_PREEMPTED
        done += len(group)
    print(f"mix train: {done} proxies trained ({swarm})")
    return 0


def run_train(args) -> int:
    return train_swarm(args.swarm, args.packed)
