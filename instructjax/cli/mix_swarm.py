"""`instructjax mix swarm`: a swarm of proxy run configs, each the base config with its mixture's rates replaced by
one of olmix's draws (instructjax/mix/swarm.py).

    instructjax mix swarm --config BASE.yaml --runs N --seed S --out SWARM_DIR [key=value ...]

The sources are the tasks of the base config's mixture (`data.mixture`, with its `define:` block), each counted as
`plan` counts it (train/plan_data.py: read and encoded, from the tokenized cache, or the papers' estimate): a task's
tokens whole, since a proxy samples each task whole (its mixture is rate mode, whatever the base's). The proxy's token
budget is `max_steps` (the config's or an override) times the tokens a step takes, as `plan` reckons the run's tokens.
SWARM_DIR gets a config per proxy (NAME.yaml: `sweep SWARM_DIR` trains them, `report SWARM_DIR` lists them),
weights.csv (a row per proxy, a `weight.TASK` column per source: what `mix fit --weights weight.` reads once the
targets are added) and swarm.json (the sources, their tokens and natural shares, the budget and caps, the seed and
the generator's settings, each proxy's weights). SWARM_DIR and the runs may be local or in a bucket.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json

import yaml

from instructjax.core import storage
from instructjax.core.errors import ConfigError

MANIFEST, WEIGHTS = "swarm.json", "weights.csv"
OLMIX_COMMIT = "9586977981e01b60c8b20330f623047f0b693fe3"  # the olmix whose generator tests/mix/test_swarm.py pins


def add_parser(sub) -> None:
    """`mix swarm`'s arguments (on `instructjax mix`'s subparsers)."""
    from instructjax.mix.swarm import Settings

    default = Settings()
    p = sub.add_parser("swarm", help="write a swarm of proxy configs: the base config's mixture with olmix's draws "
                                     "of its rates")
    p.add_argument("--config", required=True, help="the base run config: its data.mixture holds the sources")
    p.add_argument("--runs", type=int, required=True, help="how many proxies")
    p.add_argument("--seed", type=int, default=42, help="the draws' seed (olmix's default: 42)")
    p.add_argument("--out", required=True, help="the swarm's directory (new or empty, unless --force)")
    p.add_argument("--force", action="store_true", help="write over a non-empty --out: what it holds is removed first")
    p.add_argument("--packed", type=int, metavar="K", help="then train the proxies, K stacked in one step (as `mix "
                   "train SWARM_DIR --packed K`; without it `sweep SWARM_DIR` trains them one by one)")
    p.add_argument("--runs-dir", help="where the proxies' runs go, RUNS_DIR/NAME (default: the base run_dir + _swarm)")
    p.add_argument("--min-strength", type=float, default=default.min_strength, help="the Dirichlet's lowest "
                   f"concentration (default {default.min_strength})")
    p.add_argument("--max-strength", type=float, default=default.max_strength, help="its highest "
                   f"(default {default.max_strength}); 15 draws spaced logarithmically between them per round")
    p.add_argument("--minimum-weight", type=float, default=default.minimum_weight, help="a weight under it is 0; the "
                   f"others are rounded to multiples of it (default {default.minimum_weight})")
    p.add_argument("--sample-multiplier", type=int, default=default.sample_multiplier,
                   help=f"rounds of draws per proxy (default {default.sample_multiplier})")
    p.add_argument("--max-repetition", type=float, default=default.max_repetition,
                   help=f"how many times a proxy may see a task's tokens (default {default.max_repetition:g})")
    p.add_argument("--temperature", type=float, default=default.temperature,
                   help="the natural distribution ** T, renormalised, is the Dirichlet's centre (default 1: itself)")
    p.add_argument("--real-data", action="store_true", help="count every task as train reads it, hub datasets too "
                   "(as plan --real-data)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="dotted overrides of the base config, e.g. max_steps=40 model.preset=tiny (the proxies keep them)")
    p.set_defaults(func=run_swarm)


def run_swarm(args) -> int:
    from instructjax.cli import load_run_config
    from instructjax.mix import swarm

    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: a swarm has at least 1 proxy")
    try:
        settings = swarm.Settings(args.min_strength, args.max_strength, args.minimum_weight, args.sample_multiplier,
                                  args.max_repetition, args.temperature)
    except ValueError as e:
        raise ConfigError(f"mix swarm: {e}") from None
    clear = _check_out(args)
    config = load_run_config(args.config, args.overrides)
    if not config.max_steps:
        raise ConfigError(f"{args.config}: a proxy's budget is max_steps steps; set it (e.g. the override "
                          "max_steps=40)")
    tasks, counted = _count(config, real_data=args.real_data)
    tokens = {t.task: t.tokens for t in counted.tasks}
    budget = counted.run_tokens
    _check_caps(tokens, budget, settings, config)
    try:
        drawn = swarm.draw(tokens, budget, args.runs, args.seed, settings)
    except ValueError as e:
        raise ConfigError(f"mix swarm: {e}; allow more repetition (--max-repetition), a smaller minimum weight, more "
                          "rounds (--sample-multiplier), fewer --runs or fewer max_steps") from None
    proxies = _proxies(config, tasks, drawn, args)
    manifest = {
        "base_config": args.config, "overrides": args.overrides, "mixture": config.data.mixture,
        "sources": drawn.sources, "tokens": tokens, "tokens_counted": {t.task: t.origin for t in counted.tasks},
        "natural": swarm.natural(tokens), "max_steps": config.max_steps, "budget_tokens": budget,
        "caps": dict(zip(drawn.sources, swarm.caps(_held(tokens), budget, settings.max_repetition).tolist(),
                         strict=True)),
        "seed": args.seed, "runs": args.runs, "total_tokens": budget * args.runs,
        "generator": {"olmix": f"olmix/generate/synthesize_mixture.py, generate_weights_dirichlet at {OLMIX_COMMIT}",
                      **settings.to_dict()},
        "proxies": [{k: v for k, v in p.items() if k != "config"} for p in proxies],
    }
    _write(args, proxies, manifest, clear)
    print(f"{args.runs} proxies of {len(drawn.sources)} sources ({', '.join(drawn.sources)}), {config.max_steps:,} "
          f"steps and about {budget:,} tokens each, {budget * args.runs:,} in all -> {args.out}")
    if args.packed is None:
        print(f"next: instructjax sweep {args.out}")
        return 0
    from instructjax.cli.mix_train import train_swarm

    return train_swarm(args.out, args.packed)


def _count(config, *, real_data: bool):
    """The mixture's tasks (as it names them) and each counted whole (`plan`'s count of an epoch of them all), with
    the proxy's tokens: max_steps steps as `plan` reckons a step's tokens."""
    from instructjax.data.blends.specs import MixtureSpec
    from instructjax.train import setup as run_setup
    from instructjax.train.plan_data import count_tasks, epoch_of

    registry = run_setup.run_registry(config)
    resolved = run_setup.checked_mixture(config, registry)
    if resolved is None:
        raise registry.unknown(config.data.mixture, "a registered task or mixture (data.mixture)")
    tasks = list(resolved.tasks)
    if resolved.mixture is None or len(tasks) < 2:
        raise ConfigError(f"data.mixture {config.data.mixture!r} is one task: a swarm mixes the tasks of a mixture "
                          "(two or more)")
    foreign = [t for t, spec in zip(tasks, resolved.specs, strict=True) if spec is None]
    if foreign:
        raise ConfigError(f"mixture {config.data.mixture!r}: task(s) {', '.join(foreign)} are seqio Tasks of your own; "
                          "a proxy's define: block names instructjax tasks (register them with define: or add_task)")
    whole = f"{config.data.mixture}.swarm_whole"  # every task whole: what a rate-mode proxy samples from
    registry.add_mixture(whole, MixtureSpec(counts=tuple((t, None) for t in tasks)))
    counting = dataclasses.replace(config, data=dataclasses.replace(config.data, mixture=whole))
    return tasks, epoch_of(counting, count_tasks(counting, registry, real_data=real_data))


def _held(tokens: dict[str, int]):
    import numpy as np

    return np.array([tokens[s] for s in sorted(tokens)])


def _check_caps(tokens: dict[str, int], budget: int, settings, config) -> None:
    """One line where no mixture fits the caps: the tasks at the maximum repetition hold less than the budget."""
    held = {t: int(n * settings.max_repetition) for t, n in sorted(tokens.items())}
    if sum(held.values()) >= budget:
        return
    words = ", ".join(f"{t} {n:,}" for t, n in held.items())
    raise ConfigError(f"a proxy's {config.max_steps:,} steps take about {budget:,} tokens, but at --max-repetition "
                      f"{settings.max_repetition:g} the tasks hold {sum(held.values()):,} ({words}); the smallest, "
                      f"{min(held, key=held.get)}, caps its weight at {min(held.values()) / budget:.3g}: allow more "
                      "repetition or set fewer max_steps")


def _proxies(config, tasks: list[str], drawn, args) -> list[dict]:
    """Each proxy: its name, config file, run directory, weights and repetitions, and its config (the base YAML with
    the overrides, its own mixture of the drawn rates: the tasks of weight 0 left out)."""
    base = _base_yaml(args.config, args.overrides)
    runs_dir = args.runs_dir or f"{config.run_dir.rstrip('/')}_swarm"
    mixture = f"{config.data.mixture}_swarm"
    out = []
    for i, (weights, repetition) in enumerate(zip(drawn.weights, drawn.repetition, strict=True)):
        rates = {s: float(w) for s, w in zip(drawn.sources, weights, strict=True)}
        name = f"{config.name}_proxy{i:03d}"
        digest = hashlib.sha1(json.dumps(rates, sort_keys=True).encode()).hexdigest()[:8]  # another draw: another run
        run_dir = f"{runs_dir.rstrip('/')}/{name}_{digest}"  # as the base names its run_dir (relative stays so)
        proxy = dict(base, name=name, run_dir=run_dir, max_steps=config.max_steps,
                     experiment={"swarm": args.out, "proxy": i})
        define = dict(proxy.get("define") or {})
        define["mixtures"] = {**(define.get("mixtures") or {}),
                              mixture: {"mode": "rate", "rates": {t: rates[t] for t in tasks if rates[t] > 0}}}
        proxy["define"] = define
        proxy["data"] = {**(proxy.get("data") or {}), "mixture": mixture}
        out.append({"name": name, "file": f"{name}.yaml", "run_dir": run_dir, "weights": rates,
                    "repetition": dict(zip(drawn.sources, map(float, repetition), strict=True)), "config": proxy})
    return out


def _base_yaml(path: str, overrides: list[str]) -> dict:
    """The base config as its file has it, the overrides applied, its `imports:` of local .py files made absolute
    (a proxy's config lives elsewhere)."""
    from instructjax.core.config import _merge, parse_overrides
    from instructjax.core.shipped import config_file

    path = config_file(path)
    raw = _merge(yaml.safe_load(storage.path(path).read_text()) or {}, parse_overrides(overrides))
    if raw.get("imports") and not storage.is_remote(path):
        folder = str(storage.path(path).parent)
        raw["imports"] = [storage.join(folder, m) if m.endswith(".py") and not storage.is_remote(m) else m
                          for m in raw["imports"]]
    raw.pop("experiment", None)  # the base's paper row: a proxy is none
    return raw


def _check_out(args) -> bool:
    """Whether --out holds anything (to be removed before the swarm is written); one line where it does without
    --force, or where it holds the base config."""
    from instructjax.core.shipped import config_file

    storage.check_bucket(args.out, "--out")
    held = storage.listing(args.out)
    if held and not args.force:
        what = "a swarm" if MANIFEST in held else f"{len(held)} file(s)"
        raise ConfigError(f"--out {args.out} holds {what}: choose another directory, or pass --force to replace it")
    if held and _inside(config_file(args.config), args.out):
        raise ConfigError(f"--out {args.out} holds the base config {args.config}: choose another directory")
    return bool(held)


def _write(args, proxies: list[dict], manifest: dict, clear: bool) -> None:
    """The proxies' configs, weights.csv and swarm.json under --out (what it held removed first: `_check_out`)."""
    if clear:
        storage.remove_tree(args.out)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["proxy", "config", "run_dir", *(f"weight.{s}" for s in manifest["sources"])])
    for p in proxies:
        writer.writerow([p["name"], p["file"], p["run_dir"], *(repr(p["weights"][s]) for s in manifest["sources"])])
    for p in proxies:
        head = (f"# proxy {p['name']} of the swarm in {args.out} (instructjax mix swarm, seed {args.seed}): "
                f"{args.config} with its mixture's rates drawn as olmix draws them\n")
        storage.write_text(storage.join(args.out, p["file"]), head + yaml.safe_dump(p["config"], sort_keys=False))
    storage.write_text(storage.join(args.out, WEIGHTS), table.getvalue())
    storage.write_text(storage.join(args.out, MANIFEST), json.dumps(manifest, indent=1) + "\n")


def _inside(path: str, folder: str) -> bool:
    """Whether file `path` lies below `folder` (local paths resolved; URLs as written)."""
    if storage.is_remote(path) != storage.is_remote(folder):
        return False
    return (str(storage.path(path)) + "/").startswith(str(storage.path(folder)).rstrip("/") + "/")
