"""Evaluation: pass@k, sandboxed execution, pairwise/AlpacaEval/FLASK scoring, suites, both lm-eval backends."""

from __future__ import annotations

import itertools
import json
import math
import os

import pytest
import yaml
from helpers import REPO

from instructjax.core.errors import DataError
from instructjax.eval import pairwise as pw
from instructjax.eval.humaneval import (
    check_program,
    evaluate,
    load_problems,
    pass_at_k,
    run_program,
    truncate,
)
from instructjax.eval.suite import SUITES, lm_eval_runs

TASKS = REPO / "instructjax" / "eval" / "offline_tasks"

# ---- Codex-Eval -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 1, 5), (7, 3, 2), (10, 4, 10), (8, 8, 3)])
def test_pass_at_k_matches_brute_force(n, c, k):
    """Probability that a random k-subset of n samples (c correct) holds a correct one, by enumeration."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert math.isclose(pass_at_k(n, c, k), brute, rel_tol=1e-12, abs_tol=1e-12)


def test_humaneval_problems_and_sandbox():
    problems = load_problems()
    assert len(problems) == 164
    first = dict(list(problems.items())[:6])
    canonical = {t: [p["canonical_solution"]] for t, p in first.items()}
    assert evaluate(first, canonical, ks=(1,)).pass_at[1] == 1.0
    wrong = {t: ["    return None\n"] for t in first}
    assert evaluate(first, wrong, ks=(1,)).pass_at[1] == 0.0
    problem = problems["HumanEval/0"]
    assert run_program(check_program(problem, "    while True:\n        pass\n"), timeout=2) == "timed out"
    # exiting early with status 0 must not count as passing the tests
    assert run_program(check_program(problem, "    import sys; sys.exit(0)\n")) == "failed"
    assert run_program(check_program(problem, "    import os; os._exit(0)\n")) == "failed"
    # the limits hold in the program: memory, file size, CPU time (a busy loop with a longer wall timeout)
    passing = problem["canonical_solution"]
    assert run_program(check_program(problem, "    x = bytearray(1 << 29)\n" + passing), memory_bytes=1 << 28) == "failed"
    assert run_program(check_program(problem, "    x = bytearray(1 << 20)\n" + passing), memory_bytes=1 << 30) == "passed"
    assert run_program(check_program(problem, "    open('f', 'wb').write(bytes(2 << 20))\n" + passing)) == "failed"
    assert run_program(check_program(problem, "    import resource\n    assert resource.getrlimit(resource.RLIMIT_CPU)"
                                              "[0] == 3\n" + passing), timeout=2) == "passed"


def test_pass_at_k_over_mixed_samples():
    problems = dict(list(load_problems().items())[:2])
    samples = {t: [p["canonical_solution"], "    return None\n", "    return None\n"] for t, p in problems.items()}
    result = evaluate(problems, samples, ks=(1, 2))
    assert result.per_problem == {t: (3, 1) for t in problems}
    assert math.isclose(result.pass_at[1], 1 / 3) and math.isclose(result.pass_at[2], 2 / 3)


def test_truncate_at_function_end():
    assert truncate("    return 1\n\ndef other():\n    pass") == "    return 1\n"
    assert truncate("    x = 1\n    return x\nprint(f())") == "    x = 1\n    return x"


# ---- pairwise judging on recorded replies -------------------------------------------------------------


def _systems():
    a = [{"id": str(i), "instruction": f"q{i}", "output": f"A{i}"} for i in range(5)]
    b = [{"id": str(i), "instruction": f"q{i}", "output": f"B{i}"} for i in range(5)]
    return a, b


# (score for the response shown first, second) in order "ab" then "ba", per item
RECORDED = {
    "0": ("9 5\nA is more detailed.", "4 8\nThe second answer is better."),  # A preferred twice: win
    "1": ("7 7", "6 6"),  # tie twice: tie
    "2": ("8 3", "8 3"),  # first position preferred both times (position bias): tie
    "3": ("2 9", "9 2"),  # B preferred twice: lose
    "4": ("8,6", "5 5"),  # win + tie: tie (a win needs both orders)
}


def test_pairwise_requests_both_orders_and_winning_score():
    a, b = _systems()
    requests = pw.pairwise_requests(a, b)
    assert len(requests) == 10
    ab = next(r for r in requests if r["id"] == "0|ab")
    ba = next(r for r in requests if r["id"] == "0|ba")
    assert ab["prompt"].index("A0") < ab["prompt"].index("B0") and ba["prompt"].index("B0") < ba["prompt"].index("A0")
    replies = [{"id": f"{i}|{o}", "reply": RECORDED[i][k]} for i in RECORDED for k, o in enumerate(("ab", "ba"))]
    result = pw.score_pairwise(requests, replies)
    assert (result.win, result.tie, result.lose) == (1, 3, 1)
    assert result.winning_score == (1 - 1) / 5 + 1
    swapped = pw.score_pairwise(pw.pairwise_requests(b, a), [
        {"id": r["id"], "reply": r["reply"]} for r in replies])  # same replies, systems swapped
    assert (swapped.win, swapped.lose) == (1, 1)


def test_pairwise_unreadable_replies_are_counted_and_missing_ones_named():
    """A reply with no two scores is counted (`unparsed`) and is a tie in its order, as FastChat's parse_score
    ([-1, -1]) makes it: an item A wins in one order and the other unreadable is a tie; a request with no reply at
    all is one line naming it."""
    a, b = _systems()
    requests = pw.pairwise_requests(a, b)
    replies = [{"id": r["id"], "reply": "8 5" if r["order"] == "ab" else "5 8"} for r in requests]  # A wins all
    items = len({r["item"] for r in requests})
    replies[3]["reply"] = "I cannot decide."
    result = pw.score_pairwise(requests, replies)
    assert (result.win, result.tie, result.unparsed, result.n) == (items - 1, 1, 1, items)
    assert not pw.reads_score_pair(requests[3], replies[3]["reply"]) and pw.reads_score_pair(requests[0], "8 5")
    with pytest.raises(DataError, match="no judge reply for request '0|ab'"):
        pw.score_pairwise(requests, replies[1:])


# judge replies as GPT-4 writes them and as it sometimes does not
JUDGE_REPLIES = ["8 6", "8 6\nAssistant 1 gave more detail.", "7,9", "10 1", "8.5 7", "6. 6.", "8 6\r\nwhy",
                 "8, 6", "8  6", "8 6 ", "Scores: 8 6", "Assistant 1: 8\nAssistant 2: 6", "8/10 6/10", "(8, 6)",
                 "\n8 6", "I cannot decide.", "", "9", "1 2 3", "11 3", "0 5", "-2 5", "nan 5", "1e1 5"]


def test_pairwise_score_pair_is_fastchats_parse_score():
    """Our reading of a pairwise reply against FastChat's own `parse_score` (tests/helpers/upstream_code.py): every reply it
    reads on the 1-10 scale we read the same; every reply it cannot read ([-1, -1]) is unparsed here too, and so a
    tie in its order on both sides; the one difference: a pair off the scale, which it compares and we leave
    unparsed (a tie)."""
    from helpers.upstream_code import parse_score

    off_scale = []
    for reply in JUDGE_REPLIES:
        theirs = parse_score(reply)
        ours = pw.parse_score_pair(reply) if pw.reads_score_pair({}, reply) else None
        if theirs == [-1, -1]:
            assert ours is None, reply
        elif all(1 <= n <= 10 for n in theirs):
            assert ours == tuple(theirs), reply
        else:
            assert ours is None, reply
            off_scale.append(reply)
    assert off_scale == ["11 3", "0 5", "-2 5", "nan 5"]
    assert sum(pw.reads_score_pair({}, r) for r in JUDGE_REPLIES) == 8  # "1e1 5" too: float() reads it


def test_flask_per_skill_scaled():
    rows = [{"id": "a", "instruction": "q", "output": "r", "skills": ["Factuality", "Readability", "Conciseness"]},
            {"id": "b", "instruction": "q", "output": "r", "skills": ["factuality", "completeness", "readability"]}]
    requests = pw.flask_requests(rows)
    replies = [{"id": "a", "reply": "Factuality: 5\nReadability: 3\nConciseness: 1\nGood facts."},
               {"id": "b", "reply": "- factuality: 4\n- completeness: 2\n- readability: 5"}]
    scores = pw.score_flask(requests, replies)
    # seed 000's [0, 100] scale is mean / 5 * 100 (see test_eval_protocols: Table 2)
    assert scores["factuality"] == 90.0  # (5 + 4) / 2 = 4.5
    assert scores["readability"] == 80.0 and scores["conciseness"] == 20.0 and scores["completeness"] == 40.0
    assert scores["average"] == pytest.approx((4.5 + 4 + 1 + 2) / 4 * 20)
    with pytest.raises(DataError, match="unknown FLASK skill 'humour'"):
        pw.flask_requests([{**rows[0], "skills": ["humour"]}])
    assert len(pw.FLASK_SKILLS) == 8


def test_pairwise_cli_round_trip(tmp_path):
    from instructjax.cli import main

    a, b = _systems()
    pw.write_jsonl(tmp_path / "a.jsonl", a)
    pw.write_jsonl(tmp_path / "b.jsonl", b)
    req = str(tmp_path / "req.jsonl")
    assert main(["eval", "pairwise", "requests", "--a", str(tmp_path / "a.jsonl"), "--b", str(tmp_path / "b.jsonl"),
                 "--requests", req]) == 0
    pw.write_jsonl(tmp_path / "rep.jsonl", [
        {"id": r["id"], "reply": RECORDED[r["item"]][0 if r["order"] == "ab" else 1]} for r in pw.read_jsonl(req)])
    assert main(["eval", "pairwise", "score", "--requests", req, "--replies", str(tmp_path / "rep.jsonl")]) == 0


# ---- suites ---------------------------------------------------------------------------------------------


class _Tagless(yaml.SafeLoader):
    """YAML without lm-eval's `!function` tags (their modules need packages the tests do not)."""


_Tagless.add_multi_constructor("!", lambda loader, suffix, node: None)


def test_suites_name_real_lm_eval_tasks():
    from lm_eval.tasks import TaskManager

    from instructjax.eval.harness import TASKS_DIR

    known = set(TaskManager(include_path=TASKS_DIR).all_tasks)  # lm-eval's and ours (seed 004's Table 8 settings)
    for name, tasks in SUITES.items():
        for t in tasks:
            assert t.task == "codex_eval" or t.task in known, f"{name}: {t.task}"
    ifeval = next(t for t in SUITES["leaderboard"] if t.task == "ifeval")  # what lm-eval's task writes
    listed = [m["metric"] for m in yaml.load(open(TaskManager()._index["ifeval"].yaml_path), Loader=_Tagless)["metric_list"]]
    assert {ifeval.metric, *ifeval.also} <= set(listed)
    shots = dict(lm_eval_runs("leaderboard"))
    assert shots[25] == ["arc_challenge"] and shots[10] == ["hellaswag"] and "mmlu" in shots[5]
    assert all(s == 0 for s, _ in lm_eval_runs("mixture"))


# ---- both lm-eval backends on the same offline tasks -------------------------------------------------------


@pytest.mark.slow
def test_lm_eval_backends_agree(tmp_path, monkeypatch, caplog):
    pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from helpers.models import make_hf

    from instructjax.convert.saved import export_checkpoint, import_hf
    from instructjax.eval.harness import run_lm_eval

    monkeypatch.chdir(REPO)  # the task YAMLs name their data files relative to the repository
    hf = make_hf(tmp_path, "gqa", seed=11)
    import_hf(hf, str(tmp_path / "ckpt"))
    export_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "export"))
    tasks = ["ij_mc", "ij_rolling", "ij_gen"]
    ours = run_lm_eval(str(tmp_path / "ckpt"), tasks, include_path=str(TASKS), log_samples=True)
    theirs = run_lm_eval(str(tmp_path / "export"), tasks, include_path=str(TASKS), log_samples=True)
    for task in tasks:
        for mine, ref in zip(ours["samples"][task], theirs["samples"][task], strict=True):
            assert mine["doc_id"] == ref["doc_id"]
            for r1, r2 in zip(mine["resps"], ref["resps"], strict=True):
                if task == "ij_gen":
                    assert r1 == r2
                else:
                    got, want = (r1[0][0], r2[0][0]) if task == "ij_mc" else (r1[0], r2[0])
                    assert abs(float(got) - float(want)) < 2e-3 * max(1.0, abs(float(want)) / 100)
        for metric, value in theirs["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert math.isclose(ours["results"][task][metric], value, rel_tol=1e-3), (task, metric)
    # the offline tasks declare every metric's aggregation and direction: lm-eval has nothing to warn about
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("lm_eval") and r.levelname == "WARNING"
                and "is defined, but" in r.getMessage()]
    (tmp_path / "results.json").write_text(json.dumps({k: ours["results"][k] for k in tasks}, default=str))
    assert os.path.getsize(tmp_path / "results.json") > 0
    assert theirs["config"]["model_args"].endswith("dtype=float32")  # this machine has no accelerator


def test_hf_backend_runs_on_the_accelerator_in_the_runs_dtype(tmp_path):
    """lm-eval's hf model goes to the machine's accelerator in the dtype the exported run computed in (the export's
    marker), else the weights' own; float32 on the CPU only where there is no accelerator."""
    from instructjax.eval.harness import hf_placement

    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"torch_dtype": "float32"}))
    assert hf_placement(str(export), None) == ("cpu", "float32")
    assert hf_placement(str(export), "cuda") == ("cuda", "float32")  # not one of ours: the weights' dtype
    (export / "instructjax_export.json").write_text(json.dumps({"checkpoint": "x", "step": 3, "dtype": "bfloat16"}))
    assert hf_placement(str(export), "cuda") == ("cuda", "bfloat16")
    assert hf_placement(str(export), "mps") == ("mps", "bfloat16")


def test_lm_eval_outside_git_prints_no_git_error(tmp_path, monkeypatch, capfd):
    """lm-eval records the working directory's commit with `git describe`, git's stderr on ours: outside a checkout
    (a user's directory, an installed wheel's) that is a "fatal: not a git repository" line, unless taken quietly."""
    from lm_eval import evaluator

    from instructjax.eval.harness import quiet_git

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # tmp_path is in no checkout
    evaluator.get_git_commit_hash()
    assert "not a git repository" in capfd.readouterr().err  # lm-eval's own: the line this hides
    with quiet_git():
        assert evaluator.get_git_commit_hash() is None
    assert "not a git repository" not in capfd.readouterr().err
