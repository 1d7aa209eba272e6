"""The four papers' families and the report of their runs: per family a markdown page with the paper's tables
(ours / paper / difference), a CSV per table, and PNG figures (the paper's sweep curves, the training losses);
every family, a paper's or a user's own study, also gets the table of its runs (`report.study`).

A family is a module (instruction_mixture, data_selection, mosaic_it, tulu: one per paper) with KEY, TITLE,
`coordinates(run)` (where a run sits in the paper, read from what its config records (`experiment:`, never its
name) and its model; None: not this paper's), TABLES and `figures(runs, published)`; its published numbers are
`<KEY>.yaml` beside it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from types import ModuleType

import yaml

from instructjax.report import data_selection, instruction_mixture, mosaic_it, tulu
from instructjax.report.figures import Figure, draw, loss_panels
from instructjax.report.runs import Run, link_pairwise, read_run
from instructjax.report.study import Study
from instructjax.report.tables import fill, markdown, write_csv

FAMILIES = (instruction_mixture, data_selection, mosaic_it, tulu)  # seeds 000, 002, 003, 004


def published(family: ModuleType) -> dict:
    """The family's published numbers: {paper, seed, tables: {id: {source, columns, rows}}}."""
    return yaml.safe_load((files("instructjax.report") / f"{family.KEY}.yaml").read_text())


def family_of(run: Run) -> ModuleType | None:
    """The family (module) whose paper the run is of."""
    return next((f for f in FAMILIES if f.coordinates(run) is not None), None)


def own_family_name(runs: list[Run]) -> str:
    """The name of a study of one's own: the folder its configs share (else "runs")."""
    parents = {run.path.parent.name for run in runs}
    return parents.pop() if len(parents) == 1 and next(iter(parents)) else "runs"


def write_study(runs: list[Run], key: str, title: str, out: Path) -> tuple[list[str], list[Path]]:
    """The runs' own table (markdown lines for the page, its CSV), and the sweep curve where there is one."""
    study = Study.of(runs)
    csv_path = out / f"{key}_runs.csv"
    study.write_csv(csv_path)
    page, written = [study.markdown(f"The runs ({title})"), f"CSV: [{csv_path.name}]({csv_path.name})", ""], [csv_path]
    figure = study.sweep_figure(title)
    if figure is not None:
        path = draw(out / f"{key}_sweep.png", figure)
        page += [f"![{figure.title}]({path.name})", ""]
        written.append(path)
    return page, written


def write_report(paths: list[Path], out: Path) -> tuple[list[Path], list[str]]:
    """Write the report of the configs' runs under `out`: (files written, names of runs of no paper's family,
    which are reported as a study of their own)."""
    runs = [read_run(p) for p in paths]
    link_pairwise(runs)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    strangers = [r for r in runs if family_of(r) is None]
    if strangers:
        key = own_family_name(strangers)
        page, files_ = write_study(strangers, key, key, out)
        if any(r.metrics for r in strangers):
            path = draw(out / f"{key}_loss.png", Figure(f"training loss of every run, per source ({key})",
                                                        loss_panels(strangers)))
            page += [f"![training loss]({path.name})", ""]
            files_.append(path)
        md = out / f"{key}.md"
        md.write_text("\n".join([f"# {key}", "", *page]))
        written += [*files_, md]
    for family in FAMILIES:
        mine = [r for r in runs if family_of(r) is family]
        if not mine:
            continue
        data = published(family)
        evaluated = sum(r.results is not None for r in mine)
        page = [f"# {family.TITLE}", "",
                f"{len(mine)} runs, {evaluated} with results (`eval --config`). Each cell: ours / paper "
                "(ours - paper); — : missing (not run, not finished, or not evaluated by us). "
                f"Published numbers: `instructjax/report/{family.KEY}.yaml`, from {data['seed']}.", ""]
        for table in family.TABLES:
            filled = fill(table, mine, data["tables"][table.id])
            if not filled.rows:  # a sweep the paper prints no numbers of, and none of ours
                continue
            path = out / f"{family.KEY}_{table.id}.csv"
            write_csv(filled, path)
            page += [markdown(filled), f"CSV: [{path.name}]({path.name})", ""]
            written.append(path)
        figures = family.figures(mine, data)
        if any(r.metrics for r in mine):
            figures["loss"] = Figure(f"training loss of every run, per source ({family.KEY})", loss_panels(mine))
        for name, figure in figures.items():
            path = draw(out / f"{family.KEY}_{name}.png", figure)
            page += [f"![{figure.title}]({path.name})", ""]
            written.append(path)
        study_page, study_files = write_study(mine, family.KEY, family.KEY, out)
        page += study_page
        written += study_files
        md = out / f"{family.KEY}.md"
        md.write_text("\n".join(page))
        written.append(md)
    return written, [r.name for r in strangers]
