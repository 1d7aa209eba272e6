"""MT-Bench (eval/mt_bench.py) against FastChat's own llm_judge code: the judge messages its `run_judge_single`
builds from the same prompts, its rating rule, its temperatures and reference categories; and end to end through
`instructjax eval --config` on a tiny imported model, questions in FastChat's schema, the judge's replies recorded."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest

if importlib.util.find_spec("anthropic") is None:  # FastChat's llm_judge imports it for its Claude judge, not used here
    sys.modules["anthropic"] = types.ModuleType("anthropic")
common = pytest.importorskip("fastchat.llm_judge.common")

from instructjax.eval import mt_bench  # noqa: E402

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it about snow."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2 + 3?", "And times 4?"]},
    {"question_id": 131, "category": "stem", "turns": ["What is a photon?", "Explain it to a child."]},
]
REFERENCES = [{"question_id": 111, "choices": [{"index": 0, "turns": ["5", "20"]}]}]
REPLIES = ["The answer is fine. Rating: [[7]]", "Good. [[8.5]]", "Rating: [6]", "no rating given",
           "[[3]] at first, later [[9]]", "Rating: [[10]]"]


def test_constants_are_fastchats():
    assert mt_bench.TEMPERATURE == common.temperature_config
    assert list(mt_bench.NEED_REFERENCE) == common.NEED_REF_CATS


def test_requests_and_ratings_are_what_fastchat_builds_and_reads(monkeypatch):
    questions = [mt_bench.Question(str(q["question_id"]), q["category"], q["turns"],
                                   REFERENCES[0]["choices"][0]["turns"] if q["category"] == "math" else None)
                 for q in QUESTIONS]
    answers = [[f"first answer {q.id}", f"second answer {q.id}"] for q in questions]
    requests = mt_bench.judge_requests(questions, answers)
    prompts = mt_bench.judge_prompts()
    seen = []
    monkeypatch.setattr(common, "chat_completion_openai",
                        lambda model, conv, temperature, max_tokens: (seen.append(conv), REPLIES[len(seen) - 1])[1])
    for request, reply in zip(requests, REPLIES, strict=True):
        q = next(q for q in QUESTIONS if str(q["question_id"]) == request["id"].split("|")[0])
        math, multi = q["category"] in common.NEED_REF_CATS, request["turn"] == 2
        name = ("single-math-v1" if math else "single-v1") + ("-multi-turn" if multi else "")
        judge = common.Judge("gpt-4", prompts[name], ref_based=math, multi_turn=multi)
        answer = {"choices": [{"turns": answers[QUESTIONS.index(q)]}]}
        rating, user_prompt, _ = common.run_judge_single(q, answer, judge, REFERENCES[0] if math else None, multi)
        assert (seen[-1].system_message, user_prompt) == (request["system"], request["prompt"])
        assert mt_bench.rating(reply) == rating
    result = mt_bench.score(requests, [{"id": r["id"], "reply": reply} for r, reply in zip(requests, REPLIES,
                                                                                           strict=True)])
    # turn 1: 7, 6, 3 (q81, q111, q131); turn 2: 8.5, -1 (left out), 10
    assert result == {"turn_1": pytest.approx((7 + 6 + 3) / 3), "turn_2": pytest.approx((8.5 + 10) / 2), "n": 3,
                      "unrated": 1}


@pytest.mark.slow
def test_eval_config_answers_both_turns_and_scores_recorded_replies(tmp_path):
    pytest.importorskip("torch")
    from helpers.models import make_hf

    from instructjax.cli import main
    from instructjax.convert.saved import import_hf

    run_dir = tmp_path / "run"
    import_hf(make_hf(tmp_path, "gqa", seed=3), str(run_dir))
    data = tmp_path / "eval_data" / "mt_bench"
    (data / "reference_answer").mkdir(parents=True)
    (data / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (data / "reference_answer" / "gpt-4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in REFERENCES))
    (tmp_path / "run.yaml").write_text(f"name: mt\nrun_dir: {run_dir}\neval:\n  backend: instructjax\n"
                                       f"  data_dir: {tmp_path / 'eval_data'}\n  mt_bench: {{max_new_tokens: 6}}\n")
    assert main(["eval", "--config", str(tmp_path / "run.yaml")]) == 0
    out = run_dir / "eval"
    results = json.loads((out / "results.json").read_text())
    assert "none yet" in results["mt_bench"]["replies"]
    answers = {row["question_id"]: row["turns"] for row in map(json.loads, (out / "mt_bench_outputs.jsonl")
                                                               .read_text().splitlines())}
    requests = {r["id"]: r for r in map(json.loads, (out / "mt_bench_requests.jsonl").read_text().splitlines())}
    assert sorted(requests) == ["111|1", "111|2", "131|1", "131|2", "81|1", "81|2"]
    # turn 2 is asked after the model's own turn-1 answer; math is judged against the reference answers
    assert f"### Assistant A:\n{answers['81'][0]}\n\n### User:\nNow make it about snow." in requests["81|2"]["prompt"]
    assert "[The Start of Reference Answer]\n5\n" in requests["111|1"]["prompt"]
    ratings = {"81|1": 4, "81|2": 2, "111|1": 9, "111|2": 5, "131|1": 8, "131|2": 6}
    (out / "mt_bench_replies.jsonl").write_text("".join(json.dumps({"id": i, "reply": f"Rating: [[{r}]]"}) + "\n"
                                                        for i, r in ratings.items()))
    assert main(["eval", "--config", str(tmp_path / "run.yaml"), "--only", "mt_bench"]) == 0
    scored = json.loads((out / "results.json").read_text())["mt_bench"]
    assert (scored["turn_1"], scored["turn_2"], scored["n"]) == (pytest.approx(7.0), pytest.approx(13 / 3), 3)
    again = {row["question_id"]: row["turns"] for row in map(json.loads, (out / "mt_bench_outputs.jsonl")
                                                             .read_text().splitlines())}
    assert again == answers  # the rerun scored the answers it had (the sampled ones too), not new ones


def test_bad_question_files_stop_with_one_line_naming_file_and_row(tmp_path):
    from instructjax.core.errors import DataError

    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n" + '{"question_id": 2, "turns": ["only one"]}\n')
    with pytest.raises(DataError, match="question.jsonl.*row 2.*two 'turns'"):
        mt_bench.read_questions(str(path))
    path.write_text(json.dumps(QUESTIONS[1]) + "\n")  # math, and no reference answers given
    with pytest.raises(DataError, match="row 1.*needs reference answers"):
        mt_bench.read_questions(str(path))
    refs = tmp_path / "gpt-4.jsonl"
    refs.write_text('{"question_id": 111, "choices": []}\n')
    with pytest.raises(DataError, match="gpt-4.jsonl.*row 1"):
        mt_bench.read_questions(str(path), str(refs))
    refs.write_text('{"question_id": 111,\n')
    with pytest.raises(DataError, match="gpt-4.jsonl.*row 1.*invalid JSON"):
        mt_bench.read_questions(str(path), str(refs))
