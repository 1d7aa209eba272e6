"""The papers' mixtures, made from their names on first lookup (`specs.lookup_mixture`).

- seed 000 (A/C/P): `acp_<setting>` for A, C, P, AC, AP, CP, ACP (20K random examples of each type),
  `acp_ratio_<r>` (Alpaca fixed at 20K, P3 + CodeAlpaca at r x 20K, split equally), `acp_ACP_n<N>` (the
  data-count sweep: N of each).
- seed 004 (Tulu): `tulu_human`, `tulu_human_gpt` (datasets concatenated whole, FLAN V2 sampled to 100K of
  the whole collection, CoT the 50K zero-shot + 50K few-shot pool of its source, Table 1),
  `tulu_single_<dataset>` for the 12 datasets of Table 3 (SuperNI sampled to Table 1's 96,913).
- `all_builtin`: every built-in dataset, whole.
Each has a `_builtin` twin over the synthetic rows that ship with the package, with counts scaled by
`BUILTIN_SCALE` (the built-in FLAN V2 and CoT rows are already Tulu's sample: taken whole).
"""

from __future__ import annotations

import re

from instructjax.data.sources.synthetic import BUILTIN_SUFFIX

Counts = tuple[tuple[str, int | None], ...]  # (task, examples or None = all), as `specs.MixtureSpec.counts`

# seed 000: A = Alpaca (general), C = CodeAlpaca, P = P3 (specialized); 20K random examples each.
ACP_SOURCES = {"A": "alpaca", "C": "code_alpaca", "P": "p3"}
ACP_SETTINGS = ("A", "C", "P", "AC", "AP", "CP", "ACP")  # "None" is the base model, no training
ACP_PER_SOURCE = 20_000
ACP_RATIOS = (0.5, 1.0, 1.5, 2.0)
ACP_COUNTS = (2_500, 5_000, 10_000, 20_000)  # data-count sweep: same n of each type (CodeAlpaca has 20K)

# seed 004: FLAN V2 is sampled to 100K and SuperNI holds 96,913 instances (Table 1), not the hub's millions;
# CoT's 100K is its source's pool (50K zero-shot + 50K few-shot, `sources.SOURCES["cot"]`), taken whole like
# the other datasets. (Where the reference scripts draw these differently, docs/fidelity.md says so.)
TULU_SAMPLED = {"flan_v2": 100_000, "superni": 96_913}
TULU_HUMAN = ("flan_v2", "cot", "dolly", "oasst1")
TULU_HUMAN_GPT = TULU_HUMAN + ("gpt4_alpaca", "code_alpaca", "sharegpt")
TULU_TABLE3 = (
    "superni", "cot", "flan_v2", "dolly", "oasst1", "self_instruct", "unnatural_instructions",
    "alpaca", "code_alpaca", "gpt4_alpaca", "baize", "sharegpt",
)  # fmt: skip

BUILTIN_SCALE = 1 / 100  # built-in twins scale the papers' counts down to the synthetic data's size


def _task(source: str, builtin: bool) -> str:
    return source + BUILTIN_SUFFIX if builtin else source


def _scaled(n: int | None, builtin: bool) -> int | None:
    return None if n is None else (max(1, round(n * BUILTIN_SCALE)) if builtin else n)


def acp_name(setting: str, *, per_source: int = ACP_PER_SOURCE, builtin: bool = False) -> str:
    """The name of seed 000's setting with `per_source` examples of each type."""
    suffix = f"_n{per_source}" if per_source != ACP_PER_SOURCE else ""
    return f"acp_{setting}{suffix}" + (BUILTIN_SUFFIX if builtin else "")


def acp_setting(setting: str, *, per_source: int = ACP_PER_SOURCE, builtin: bool = False) -> Counts:
    """Seed 000's settings (A, C, P, AC, AP, CP, ACP): `per_source` random examples of each type."""
    return tuple((_task(ACP_SOURCES[t], builtin), _scaled(per_source, builtin)) for t in setting)


def acp_ratio(ratio: float, *, general: int = ACP_PER_SOURCE, builtin: bool = False) -> Counts:
    """Seed 000's ratio sweep: Alpaca fixed at `general`, the specialized share (P3 + CodeAlpaca, split
    equally) at `ratio` x general; at 2.0 every type has `general` examples (the ACP setting)."""
    specialized = round(ratio * general / 2)
    return ((_task("alpaca", builtin), _scaled(general, builtin)),
            (_task("code_alpaca", builtin), _scaled(specialized, builtin)),
            (_task("p3", builtin), _scaled(specialized, builtin)))


def tulu(sources: tuple[str, ...], *, builtin: bool = False) -> Counts:
    """Seed 004's datasets concatenated whole, FLAN V2 and SuperNI sampled to Table 1's sizes (whole when
    built in)."""
    return tuple((_task(s, builtin), None if builtin else TULU_SAMPLED.get(s)) for s in sources)


def paper_counts(name: str) -> Counts | None:
    """The counts of the mixture a paper's name stands for (see the module doc), or None."""
    from instructjax.data.sources.registry import SOURCES

    base, builtin = (name[: -len(BUILTIN_SUFFIX)], True) if name.endswith(BUILTIN_SUFFIX) else (name, False)
    if name == "all_builtin":
        return tuple((s + BUILTIN_SUFFIX, None) for s in SOURCES)
    if match := re.fullmatch(r"acp_(A|C|P|AC|AP|CP|ACP)(?:_n(\d+))?", base):
        setting, n = match.groups()
        if n is not None and (setting != "ACP" or int(n) <= 0):
            return None
        return acp_setting(setting, per_source=int(n) if n else ACP_PER_SOURCE, builtin=builtin)
    if match := re.fullmatch(r"acp_ratio_(\d+(?:\.\d+)?)", base):
        ratio = float(match.group(1))
        return acp_ratio(ratio, builtin=builtin) if ratio > 0 else None
    if base in ("tulu_human", "tulu_human_gpt"):
        return tulu(TULU_HUMAN if base == "tulu_human" else TULU_HUMAN_GPT, builtin=builtin)
    if base.startswith("tulu_single_") and base.removeprefix("tulu_single_") in TULU_TABLE3:
        return tulu((base.removeprefix("tulu_single_"),), builtin=builtin)
    return None




def paper_names() -> list[str]:
    """The standard points of every family (each also as `_builtin`), and `all_builtin`."""
    names = ["all_builtin"]
    for suffix in ("", BUILTIN_SUFFIX):
        names += [acp_name(s) + suffix for s in ACP_SETTINGS]
        names += [f"acp_ratio_{r:g}{suffix}" for r in ACP_RATIOS]
        names += [acp_name("ACP", per_source=n) + suffix for n in ACP_COUNTS]
        names += [f"tulu_{w}{suffix}" for w in ("human", "human_gpt")]
        names += [f"tulu_single_{s}{suffix}" for s in TULU_TABLE3]
    return list(dict.fromkeys(names))
