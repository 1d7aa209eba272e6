"""`instructjax mix table`: a swarm's proxies, trained, as one table of their weights and targets (mix/targets.py).

    instructjax mix table SWARM_DIR --target loss:TASK [--target metric:NAME ...] --out table.csv [--examples N]

reads SWARM_DIR/weights.csv (`mix swarm`: a row per proxy, its config, its run directory and its `weight.TASK`
columns), measures each target of each proxy's run, and writes table.csv (the weights, then a column per target, as
each was written: what `mix fit --weights weight. --target COL` reads) and table.json beside it (the same rows, the
swarm and how each target was measured). A proxy with no figure for a target (not trained yet, never logged it) is
one line naming them, and nothing is written. Paths may be local or in a bucket.
"""

from __future__ import annotations

import csv
import io
import json

from instructjax.core import storage
from instructjax.core.errors import ConfigError, InstructJaxError

WEIGHTS = "weights.csv"  # mix swarm's table (cli/mix_swarm.py)
SHOWN = 5  # proxies named in the one line for a missing target, then a count


def add_parser(sub) -> None:
    """`mix table`'s arguments (on `instructjax mix`'s subparsers)."""
    p = sub.add_parser("table", help="gather a trained swarm's targets beside its weights (CSV and JSON)")
    p.add_argument("swarm", metavar="SWARM_DIR", help="a directory `mix swarm` wrote (its weights.csv)")
    p.add_argument("--target", action="append", required=True, metavar="KIND:NAME",
                   help="loss:TASK (the proxy's loss on TASK's examples), metric:NAME (the last logged value), "
                        "result:KEY (results.json, dotted); a leading - negates one where higher is better; repeat")
    p.add_argument("--examples", type=int, default=256, help="loss:TASK scores TASK's first N examples (default 256)")
    p.add_argument("--out", required=True, help="the table's CSV (table.json is written beside it)")
    p.set_defaults(func=run_table)


def run_table(args) -> int:
    from instructjax.mix import targets as targets_lib

    try:
        wanted = [targets_lib.parse_target(t) for t in args.target]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.examples < 1:
        raise ConfigError(f"--examples {args.examples}: at least 1")
    if not args.out.endswith(".csv"):
        raise ConfigError(f"--out {args.out}: the table is a .csv file (table.json is written beside it)")
    source = storage.join(args.swarm, WEIGHTS)
    beside = args.out.removesuffix(".csv") + ".json"
    for own in (source, storage.join(args.swarm, "swarm.json")):  # what the swarm holds is never written over
        if own in (storage.join(args.out), storage.join(beside)):
            raise ConfigError(f"--out {args.out} would write over the swarm's own {own}: give another file")
    proxies, weight_columns = read_proxies(source)
    rows, missing = [], []
    for proxy in proxies:
        row, why_not = {"proxy": proxy["proxy"], **{c: float(proxy[c]) for c in weight_columns}}, []
        for target in wanted:
            value, why = _measure(targets_lib, target, proxy, args)
            if value is None:
                why_not.append(f"{target.column}: {why}")
            else:
                row[target.column] = target.sign * value
        rows.append(row)
        if why_not:
            missing.append(f"{proxy['proxy']} ({'; '.join(why_not)})")
    if missing:
        more = f", and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise ConfigError(f"{source}: {len(missing)} of {len(proxies)} proxies lack a target: "
                          f"{', '.join(missing[:SHOWN])}{more}")
    columns = ["proxy", *weight_columns, *(t.column for t in wanted)]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[row[c] if c == "proxy" else repr(row[c]) for c in columns] for row in rows])
    storage.write_text(args.out, table.getvalue())
    storage.write_text(beside, json.dumps({"swarm": args.swarm, "examples": args.examples,
                                           "targets": [t.column for t in wanted], "rows": rows}, indent=1) + "\n")
    print(f"{len(rows)} proxies, {len(wanted)} target(s): wrote {args.out} and {beside}")
    return 0


def read_proxies(path: str) -> tuple[list[dict], list[str]]:
    """weights.csv's rows and its weight columns."""
    try:
        text = storage.path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: SWARM_DIR is a directory `mix swarm` wrote") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    header = list(rows[0]) if rows else []
    weight_columns = [c for c in header if c.startswith("weight.")]
    if not rows or not {"proxy", "config", "run_dir"} <= set(header) or not weight_columns:
        raise ConfigError(f"{path}: not a swarm's table (a header proxy,config,run_dir,weight.TASK..., a row per proxy)")
    return rows, weight_columns


def _measure(targets_lib, target, proxy: dict, args) -> tuple[float | None, str]:
    """(the proxy's figure for `target`, or None and why there is none)."""
    from instructjax.cli import load_run_config
    from instructjax.core.checkpoint import read_meta
    from instructjax.core.context import Context, current
    from instructjax.eval.run import read_results
    from instructjax.train.metrics import read_metrics

    with Context(parent=current()):  # the proxy's own registry: every proxy defines one mixture name at its rates
        config = load_run_config(storage.join(args.swarm, proxy["config"]))
        run_dir = config.run_dir
        if target.kind == "metric":
            value = targets_lib.last_logged(read_metrics(run_dir), target.name)
            return value, "never logged"
        if target.kind == "result":
            return targets_lib.result_at(read_results(config), target.name), "not in its results.json"
        try:
            read_meta(run_dir, contents=False)
        except (InstructJaxError, OSError):
            return None, f"no checkpoint in {run_dir}"
        try:
            return targets_lib.task_loss(config, run_dir, target.name, args.examples), ""
        except ValueError as e:
            raise ConfigError(f"{proxy['config']}, target {target.column}: {e}") from None
