"""`instructjax report DIR_OR_GLOB --out DIR`: the tables and figures of a family's runs.

Reads each config's run (RUN_DIR/eval/results.json, RUN_DIR/metrics.jsonl) and writes, per paper family,
OUT/<family>.md (the paper's tables: ours / paper / difference), OUT/<family>_<table>.csv and PNG figures
(instructjax/report/families.py); every family, and the runs of a study of one's own (named after their
configs' folder), also get OUT/<name>_runs.csv, a row per run (instructjax/report/study.py), with the overlaid
losses and, where the runs differ in one numeric key, OUT/<name>_sweep.png. OUT may be local or in a bucket.
`--coverage` prints instead how many of the papers' published numbers the configs can produce (report/coverage.py).
"""

from __future__ import annotations

from pathlib import Path

from instructjax.core import storage
from instructjax.core.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="the papers' tables (ours vs published) and figures from runs")
    p.add_argument("configs", metavar="DIR_OR_GLOB", help="a directory of run configs (recursively) or a glob")
    p.add_argument("--out", help="directory for the markdown, CSV and PNG files")
    p.add_argument("--coverage", action="store_true",
                   help="instead: per paper and table, how many published numbers these configs and our protocols "
                        "can produce, and why not the rest (e.g. `report configs --coverage`)")
    p.set_defaults(func=run)


def run(args) -> int:
    from instructjax.report.coverage import report
    from instructjax.report.families import write_report
    from instructjax.report.runs import config_paths

    paths = config_paths(args.configs)
    if args.coverage:
        print(report(paths))
        return 0
    if not args.out:
        raise ConfigError("report needs --out (or --coverage)")
    with storage.writing_dir(args.out) as local:  # a bucket: written here, then uploaded
        written, strangers = write_report(paths, Path(local))
    for path in written:
        print(f"wrote {storage.join(args.out, path.name)}")
    if strangers:
        print(f"not of a paper's family (a table of their own): {', '.join(strangers)}")
    return 0
