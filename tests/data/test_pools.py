"""Pooled and whole-collection sources on local files in their hub schemas, against brute-force draws:
seed 000's P3 pool (1K of every prompted subtask), seed 004's FLAN V2 (sampled from every submix of the
collection) and CoT (50K zero-shot + 50K few-shot, as open-instruct's `convert_cot_data`)."""

import fnmatch
import hashlib
import json

import numpy as np
import pytest
from helpers.pools import AG_NEWS, COPA, P3_SUBTASKS, check_golden, p3_row, pair_of, write_dir

from instructjax.core.errors import BadRowPolicy, ConfigError, DataError
from instructjax.data.blends import papers, specs
from instructjax.data.sources.load import load_conversations
from instructjax.data.sources.registry import FLAN_V2_SUBMIXES, SOURCES
from instructjax.data.tokenized import examples as examples_lib


def usable(row: dict) -> bool:
    return row.get("is_correct") is not False and bool(pair_of(row)[1])


def seeded_order(pool_seed: int, part: str, n: int) -> list[int]:
    """The documented part order: numpy's permutation seeded by (pool_seed, sha256 of the part's name)."""
    key = int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little")
    return np.random.default_rng([pool_seed, key]).permutation(n).tolist()


def brute_pool(parts: dict[str, list[dict]], per_part: int, pool_seed: int = 0) -> tuple[dict, dict]:
    """Per part, the pairs of its first `per_part` usable rows in its seeded order; and the skips passed over."""
    pool, skipped = {}, {"incorrect_choice": 0, "empty_response": 0}
    for name, rows in parts.items():
        taken = []
        for i in seeded_order(pool_seed, name, len(rows)):
            if len(taken) == per_part:
                break
            if usable(rows[i]):
                taken.append(pair_of(rows[i]))
            else:
                skipped["incorrect_choice" if rows[i].get("is_correct") is False else "empty_response"] += 1
        pool[name] = taken
    return pool, {k: v for k, v in skipped.items() if v}


def pairs(conversations) -> list[tuple[str, str]]:
    return [(c.messages[0]["content"], c.messages[1]["content"]) for c in conversations]


@pytest.mark.parametrize("per_part", [3, 1000])
def test_p3_pool_is_the_first_usable_rows_of_each_subtasks_seeded_order(tmp_path, per_part):
    """A directory of subtask files (jsonl and parquet) is the P3 pool: each subtask gives its first
    `per_part` answer pairs in its own seeded order (all of a smaller subtask), wrong choices and empty
    targets passed over and counted; in row order without a shuffle seed."""
    directory = write_dir(tmp_path / "p3", P3_SUBTASKS, parquet=("xsum_summarize_DOC",))
    policy = BadRowPolicy()
    got = list(load_conversations("p3", [directory], policy=policy, cache_dir=str(tmp_path / "c"),
                                  per_part=per_part))
    pool, skipped = brute_pool(P3_SUBTASKS, per_part)
    assert sorted(pairs(got)) == sorted(p for taken in pool.values() for p in taken)
    if per_part == 3:  # every subtask but cos_e (2 rows) gives exactly 3; 5 correct COPA choices give 3
        assert [len(pool[n]) for n in P3_SUBTASKS] == [3, 3, 3, 2, 3]
    else:  # whole subtasks: 7 + 5 correct choices + 5 non-empty + 2 + 4
        assert len(got) == 23 and skipped == {"incorrect_choice": 5, "empty_response": 1}
    assert dict(policy.skipped) == skipped and policy.read == len(got) + sum(skipped.values())
    # row order: subtasks by file name, rows in file order
    order = [(name, i) for name in sorted(P3_SUBTASKS) for i, r in enumerate(P3_SUBTASKS[name])]
    position = {pair_of(P3_SUBTASKS[n][i]): k for k, (n, i) in enumerate(order) if usable(P3_SUBTASKS[n][i])}
    assert [position[p] for p in pairs(got)] == sorted(position[p] for p in pairs(got))
    assert not {pair_of(r) for r in COPA if not r["is_correct"]} & set(pairs(got))


def test_p3_pool_nests_is_stable_per_subtask_and_is_sampled_by_the_run(tmp_path):
    """Smaller pools lie inside larger ones; removing a subtask leaves the others' rows alone; another
    pool_seed draws another pool; a shuffle seed visits the same pool in another order."""
    directory = write_dir(tmp_path / "p3", P3_SUBTASKS)

    def pool(d=directory, **options) -> list[tuple[str, str]]:
        return pairs(load_conversations("p3", [d], cache_dir=str(tmp_path / "c"), **options))

    two, three = pool(per_part=2), pool(per_part=3)
    assert len(two) == 5 * 2 and set(two) < set(three)
    fewer = write_dir(tmp_path / "p3_fewer", {k: v for k, v in P3_SUBTASKS.items() if k != "ag_news_classify"})
    ag_news = {pair_of(r) for r in AG_NEWS}
    assert pool(fewer, per_part=3) == [p for p in three if p not in ag_news]
    assert set(pool(per_part=3, pool_seed=1)) != set(three)
    shuffled = pool(per_part=3, shuffle_seed=5)
    assert sorted(shuffled) == sorted(three) and shuffled != three


def test_a_p3_mixture_draws_its_subset_from_the_pool(tmp_path):
    """Through the task layer: the subset of a pooled task is the first N of the pool in the task's seeded
    order (brute force: the pool visited by numpy's permutation seeded with specs.subset_seed)."""
    directory = write_dir(tmp_path / "p3", P3_SUBTASKS)
    specs.add_task("pool_p3", specs.TaskSpec(source="p3", data_files=(directory,), source_options=(("per_part", 3),)))
    got = [json.loads(e["conversation"])["messages"] for e in examples_lib.encoded_examples("pool_p3", 6, seed=11)]
    pool, _ = brute_pool(P3_SUBTASKS, 3)
    in_row_order = [pair_of(r) for name in sorted(P3_SUBTASKS) for r in P3_SUBTASKS[name]
                    if pair_of(r) in set(pool[name])]
    order = np.random.default_rng(specs.subset_seed(11, "pool_p3")).permutation(len(in_row_order))
    assert [(m[0]["content"], m[1]["content"]) for m in got] == [in_row_order[i] for i in order[:6]]



def test_a_pool_read_from_a_directory_is_cached_and_a_new_part_changes_the_key(monkeypatch, tmp_path, new_command):
    """A directory of parts is cached like a list of files: a restart reads the examples back without
    rewriting the file; a subtask added to the directory is a new key, whose examples are the uncached ones."""
    directory = write_dir(tmp_path / "p3", P3_SUBTASKS)
    specs.add_task("pool_cached", specs.TaskSpec(source="p3", data_files=(directory,), source_options=(("per_part", 3),)))

    def read(where):
        monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(where))
        new_command()  # what a new process starts with
        return [e["conversation"] for e in examples_lib.encoded_examples("pool_cached", 8, seed=2)]

    where = tmp_path / "cache"
    reference = read("off")
    assert read(where) == reference  # cold: written
    files = sorted(where.glob("*.tok"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    assert read(where) == reference and files[0].stat().st_mtime_ns == stamp  # warm: read back

    write_dir(tmp_path / "p3", {"squad_v2_answer": [p3_row(f"Question {i}: who?", f"Answer {i}.") for i in range(4)]})
    grown = read("off")
    assert grown != reference
    assert read(where) == grown and len(list(where.glob("*.tok"))) == 2

def test_p3_bad_rows_and_bad_directories_are_one_line_errors(tmp_path):
    broken = dict(P3_SUBTASKS, ag_news_classify=AG_NEWS[:3] + [{"inputs_pretokenized": "No target here."}])
    directory = write_dir(tmp_path / "p3", broken)
    with pytest.raises(DataError, match=r"ag_news_classify\.jsonl, row 4: missing field 'targets_pretokenized'") as err:
        list(load_conversations("p3", [directory], cache_dir=str(tmp_path / "c")))
    assert "\n" not in str(err.value)
    skipping = BadRowPolicy("skip")
    got = list(load_conversations("p3", [directory], policy=skipping, cache_dir=str(tmp_path / "c")))
    assert skipping.skipped["missing_field"] == 1 and len(got) == 7 + 5 + 2 + 2 + 4

    (tmp_path / "empty").mkdir()
    (tmp_path / "p3" / "notes.txt").write_text("not data")
    (tmp_path / "nested" / "inner").mkdir(parents=True)
    for where, message in [("empty", "holds no files"), ("p3", "unsupported file type"),
                           ("nested", "a data directory holds files only")]:
        with pytest.raises(ConfigError, match=message) as err:
            list(load_conversations("p3", [str(tmp_path / where)], cache_dir=str(tmp_path / "c")))
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="per_part must be a positive integer"):
        list(load_conversations("p3", [directory], per_part=0))


def test_p3_defaults_are_the_papers_pool():
    p3 = SOURCES["p3"]
    assert p3.options == {"per_part": 1000, "pool_seed": 0} and p3.hub_parts == "configs"
    assert dict(specs.lookup_mixture("acp_P").counts) == {"p3": 20_000}  # 20K drawn from the ~660K pool


# ---- FLAN V2: every submix file of the collection (SirNeural/flan_v2's files and schema) --------------------

def _flan_rows(submix: str, shots: str, options: str, n: int) -> list[dict]:
    return [{"inputs": f"[{submix} {shots} {options} {i}] Answer the question: what is {i} + {len(submix)}?",
             "targets": "" if i == 3 else str(i + len(submix)), "task_source": submix.capitalize(),
             "task_name": f"{submix}_task_{i % 3}", "template_type": f"{shots}_{options}"} for i in range(n)]


FLAN_FILES = {  # file stem -> rows, as the hub names the files (flan_fs_opt comes in parts)
    "flan_zs_opt_train": _flan_rows("flan", "zs", "opt", 30),
    "flan_fs_opt_train_part1": _flan_rows("flan", "fs", "opt", 12),
    "flan_fs_opt_train_part2": _flan_rows("flan", "fs", "opt2", 9),
    "t0_zs_noopt_train": _flan_rows("t0", "zs", "noopt", 25),
    "niv2_fs_opt_train": _flan_rows("niv2", "fs", "opt", 20),
    "cot_zs_opt_train": _flan_rows("cot", "zs", "opt", 8),
    "dialog_fs_noopt_train": _flan_rows("dialog", "fs", "noopt", 16),
}


def test_flan_v2_reads_every_submix_file_of_the_collection():
    patterns = SOURCES["flan_v2"].hub_data_files
    assert {p.split("_")[0] for p in patterns} == set(FLAN_V2_SUBMIXES) == {"flan", "t0", "niv2", "cot", "dialog"}
    for stem in FLAN_FILES:
        assert sum(fnmatch.fnmatch(stem + ".jsonl.gz", p) for p in patterns) == 1, stem
    assert not any(fnmatch.fnmatch("README.md", p) for p in patterns)


def test_flan_v2_samples_across_all_submixes_like_a_brute_force_draw(tmp_path):
    """100K of the whole collection, scaled down: the first N non-empty rows of one seeded permutation of
    all rows of all submix files (a directory of them, sorted by name), read with json here."""
    directory = write_dir(tmp_path / "flan", FLAN_FILES)
    specs.add_task("whole_flan", specs.TaskSpec(source="flan_v2", data_files=(directory,)))
    got = [json.loads(e["conversation"]) for e in examples_lib.encoded_examples("whole_flan", 60, seed=4)]
    rows = [r for stem in sorted(FLAN_FILES) for r in FLAN_FILES[stem]]
    order = np.random.default_rng(specs.subset_seed(4, "whole_flan")).permutation(len(rows))
    expected = [pair_of(rows[i]) for i in order if pair_of(rows[i])[1]][:60]
    assert [(c["messages"][0]["content"], c["messages"][1]["content"]) for c in got] == expected
    assert {c["meta"]["task_source"].lower() for c in got} == set(FLAN_V2_SUBMIXES)
    assert papers.TULU_SAMPLED["flan_v2"] == 100_000


# ---- CoT: 50K zero-shot + 50K few-shot -------------------------------------------------------------------

def test_cot_is_a_pool_of_zero_shot_and_few_shot_halves(tmp_path):
    """open-instruct's convert_cot_data(50000, 50000): n of cot_zs_opt and n of cot_fs_opt, each a seeded
    draw of its file (brute force per file), so the Tulu mixtures take the CoT pool whole."""
    cot = SOURCES["cot"]
    assert cot.options["per_part"] == 50_000 and cot.hub_parts == "files"
    assert cot.hub_data_files == ("cot_zs_opt_train.jsonl.gz", "cot_fs_opt_train.jsonl.gz")
    assert dict(specs.lookup_mixture("tulu_single_cot").counts) == {"cot": None}

    files = {"cot_zs_opt_train": _flan_rows("cot", "zs", "opt", 14), "cot_fs_opt_train": _flan_rows("cot", "fs", "opt", 19)}
    directory = write_dir(tmp_path / "cot", files)
    got = pairs(load_conversations("cot", [directory], cache_dir=str(tmp_path / "c"), per_part=5))
    pool, _ = brute_pool(files, 5)
    assert sorted(got) == sorted(pool["cot_zs_opt_train"] + pool["cot_fs_opt_train"])
    assert [sum("[cot zs" in p[0] for p in got), sum("[cot fs" in p[0] for p in got)] == [5, 5]


# ---- Golden draws: the rows every pool and subset draw takes, stored once ----------------------------------
#
# The brute-force references above restate the drawing rules, so a change of rule made in both places would
# pass them. These tests pin the outcome instead: the rows each draw takes, in order, on the hand-written files
# above, as stored in tests/assets/golden/*.json. A row is named "<file stem>:<0-based row in that file>", found
# from its (input, target) text, so the stored lists depend on which rows are drawn and in which order, not on
# conversation ids, templates or tokenizers.
#
# How they were made: `INSTRUCTJAX_WRITE_GOLDEN=1 pytest tests/data/test_pools.py tests/data/test_tasks.py -k golden`
# writes the files from the current code (the tests then skip); the lists were written once, after the
# brute-force tests above passed on the same inputs. Writing them again is a deliberate change of the drawing
# semantics: every paper's P3 pool, FLAN V2 / CoT sample and A/C/P subset changes with it. Say so in the commit.

def row_names(parts: dict[str, list[dict]]):
    """A function from (input, target) pairs to the "<file stem>:<row>" names of the rows they came from."""
    names = {pair_of(row): f"{stem}:{i}" for stem, rows in parts.items() for i, row in enumerate(rows)}
    assert len(names) == sum(len(rows) for rows in parts.values()), "the golden rows must be told apart by text"
    return lambda taken: [names[p] for p in taken]


def example_pairs(examples: list[dict]) -> list[tuple[str, str]]:
    """The (input, target) pair of each encoded example (its conversation)."""
    return [(m[0]["content"], m[1]["content"]) for m in (json.loads(e["conversation"])["messages"] for e in examples)]


def test_golden_p3_pools(tmp_path):
    """The P3 pool (seed 000): per_part 3 under pool seeds 0 and 1, in row order and visited with a shuffle
    seed, and whole subtasks (per_part 1000)."""
    directory = write_dir(tmp_path / "p3", P3_SUBTASKS, parquet=("xsum_summarize_DOC",))
    name = row_names(P3_SUBTASKS)

    def pool(**options) -> list[str]:
        return name(pairs(load_conversations("p3", [directory], cache_dir=str(tmp_path / "c"), **options)))

    check_golden("p3_pools", {
        "per_part=3": pool(per_part=3),
        "per_part=3,pool_seed=1": pool(per_part=3, pool_seed=1),
        "per_part=3,shuffle_seed=5": pool(per_part=3, shuffle_seed=5),
        "per_part=1000": pool(per_part=1000),
    })


def test_golden_p3_task_subset(tmp_path):
    """Through the task layer: 6 examples of a pooled P3 task (per_part 3) drawn with data seeds 11 and 12."""
    directory = write_dir(tmp_path / "p3", P3_SUBTASKS)
    specs.add_task("golden_p3", specs.TaskSpec(source="p3", data_files=(directory,),
                                               source_options=(("per_part", 3),)))
    name = row_names(P3_SUBTASKS)

    def subset(seed: int) -> list[str]:
        return name(example_pairs(examples_lib.encoded_examples("golden_p3", 6, seed=seed)))

    check_golden("p3_task_subset", {"seed=11": subset(11), "seed=12": subset(12)})


def test_golden_flan_v2_and_cot_draws(tmp_path):
    """Seed 004's FLAN V2 sample (60 of the whole collection, data seeds 4 and 5) and CoT pool (5 zero-shot +
    5 few-shot, pool seeds 0 and 1)."""
    flan = write_dir(tmp_path / "flan", FLAN_FILES)
    specs.add_task("golden_flan", specs.TaskSpec(source="flan_v2", data_files=(flan,)))
    name = row_names(FLAN_FILES)

    def flan_subset(seed: int) -> list[str]:
        return name(example_pairs(examples_lib.encoded_examples("golden_flan", 60, seed)))

    cot_files = {"cot_zs_opt_train": _flan_rows("cot", "zs", "opt", 14),
                 "cot_fs_opt_train": _flan_rows("cot", "fs", "opt", 19)}
    cot = write_dir(tmp_path / "cot", cot_files)

    def cot_pool(**options) -> list[str]:
        return row_names(cot_files)(pairs(load_conversations("cot", [cot], cache_dir=str(tmp_path / "c"), **options)))

    check_golden("flan_v2_cot_draws", {
        "flan_v2,seed=4": flan_subset(4),
        "flan_v2,seed=5": flan_subset(5),
        "cot,per_part=5": cot_pool(per_part=5),
        "cot,per_part=5,pool_seed=1": cot_pool(per_part=5, pool_seed=1),
    })
