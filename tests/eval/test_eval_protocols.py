"""The papers' GSM8K/BBH protocols (subsets, answer rules, scoring of lm-eval samples), the judges'
protocols (FLASK scale, pairwise/AlpacaEval rules) and `instructjax eval --config`."""

from __future__ import annotations

import json
import random
import re

import pytest
from helpers import ASSETS, REPO

from instructjax.eval import pairwise as pw
from instructjax.eval.protocols import (
    GSM8K_TEST_SIZE,
    Protocol,
    bbh_answer,
    gsm8k_answer,
    gsm8k_target,
    is_correct,
    normalize_text,
    protocol_samples,
    score_samples,
    score_suite_task,
    subset,
)
from instructjax.eval.suite import SuiteTask, protocols

# ---- GSM8K: the last number ------------------------------------------------------------------------------


@pytest.mark.parametrize("response,expected", [
    ("She has 5 + 3 = 8 apples. The answer is 8.", "8"),
    ("In total 1,234 + 1,000 = 2,234. The answer is 2,234.", "2234"),
    ("The total is 1,000,000 dollars", "1000000"),
    ("It costs $18.00.", "18"),
    ("He pays $1,250.50 in all.", "1250.5"),
    ("The temperature drops to -3. The answer is -3.", "-3"),
    ("The change is -$5.", "-5"),
    ("So 10 - 3 = 7", "7"),  # subtraction, not a negative number
    ("between 3-4 hours", "4"),
    ("The answer is 0.5", "0.5"),
    ("about .75 of it", "0.75"),
    ("The answer is 42.\n", "42"),
    ("1,2,3 and so on", "3"),  # list commas are not thousands separators
    ("There are 3 groups of 12,34567 items", "34567"),
    ("I do not know.", None),
    ("", None),
])
def test_gsm8k_last_number(response, expected):
    assert gsm8k_answer(response) == expected


def test_gsm8k_scoring_against_targets():
    doc = {"question": "q", "answer": "Janet sells 16 - 3 - 4 = 9 eggs.\n#### 1,080"}
    assert gsm8k_target(doc) == "1080"
    assert is_correct("gsm8k", "So she makes 1080.00 dollars.", doc)
    assert is_correct("gsm8k", "The answer is $1,080.", doc)
    assert not is_correct("gsm8k", "The answer is 1080. Then 5 more.", doc)  # the LAST number counts
    assert not is_correct("gsm8k", "No idea.", doc)
    assert is_correct("gsm8k", "The answer is -7.", {"answer": "#### -7"})
    assert not is_correct("gsm8k", "The answer is 7.", {"answer": "#### -7"})


# ---- BBH: what follows "So the answer is" ---------------------------------------------------------------


@pytest.mark.parametrize("response,expected", [
    ("A is true. So the answer is (A).", "(A)"),
    ("Let's think. So the answer is Yes.", "Yes"),
    ("So the answer is valid", "valid"),  # no final period
    ("Sorted: so the answer is apple banana cherry.", "apple banana cherry"),  # several words
    ("So the answer is ] ) }.\nQ: next", "] ) }"),
    ("So the answer is 3.5 liters. Then more.", "3.5 liters"),  # a decimal point is no sentence end
    ("So the answer is -12.", "-12"),
    ("So the answer is (B). Later: so the answer is (C).", "(B)"),  # the first one
    ("So the answer is No\nmore text", "No"),
    ("I think it is (D).", "I think it is (D)."),  # no phrase: the whole response
])
def test_bbh_answer(response, expected):
    assert bbh_answer(response) == expected


def test_bbh_comparison_ignores_case_and_punctuation():
    assert normalize_text("(A)") == "a" and normalize_text("  Apple,  banana ") == "apple banana"
    assert is_correct("bbh", "So the answer is (A).", {"target": "(A)"})
    assert is_correct("bbh", "so the answer is yes.", {"target": "Yes"})
    assert not is_correct("bbh", "So the answer is (B).", {"target": "(A)"})
    assert not is_correct("bbh", "So the answer is False.", {"target": "True"})


# ---- subsets --------------------------------------------------------------------------------------------


def test_gsm8k_subset_is_the_reference_scripts_draw():
    """The Tulu reference script: random.seed(42), then random.sample(test_data, 200) over the problems."""
    docs = [{"question": f"q{i}"} for i in range(GSM8K_TEST_SIZE)]
    random.seed(42)
    reference = random.sample(docs, 200)
    ours = subset(GSM8K_TEST_SIZE, 200, 42)
    assert [docs[i] for i in ours] == reference
    assert len(set(ours)) == 200 and all(0 <= i < GSM8K_TEST_SIZE for i in ours)
    assert sorted(ours) != list(range(200))  # not the first 200


def test_subset_deterministic_seeded_and_sized():
    draws = {seed: subset(GSM8K_TEST_SIZE, 200, seed) for seed in range(20)}
    assert all(subset(GSM8K_TEST_SIZE, 200, s) == d for s, d in draws.items())  # deterministic
    assert len({tuple(sorted(d)) for d in draws.values()}) == 20  # every seed its own subset
    overlap = [len(set(draws[a]) & set(draws[b])) for a in range(20) for b in range(a + 1, 20)]
    assert 15 < sum(overlap) / len(overlap) < 45  # about 200 * 200 / 1319 = 30, as independent draws
    assert subset(10, None, 0) == list(range(10)) and subset(10, 12, 0) == list(range(10))
    # every index is drawn about equally often over many seeds (brute force: 2000 draws of 3 of 10)
    counts = [0] * 10
    for s in range(2000):
        for i in subset(10, 3, s):
            counts[i] += 1
    assert all(500 < c < 700 for c in counts)  # expected 600 each


def test_bbh_subsets_per_task_independent_of_other_tasks():
    protocol = Protocol("bbh", 40, 42)
    sizes = {"bbh_cot_fewshot_snarks": 178, "bbh_cot_fewshot_navigate": 250, "bbh_cot_fewshot_web_of_lies": 250}
    samples = protocol_samples(protocol, "bbh_cot_fewshot", sizes)
    assert {k: len(v) for k, v in samples.items()} == {k: 40 for k in sizes}
    assert all(v == sorted(set(v)) and v[-1] < sizes[k] for k, v in samples.items())
    assert samples["bbh_cot_fewshot_navigate"] != samples["bbh_cot_fewshot_web_of_lies"]  # same size, own draw
    alone = protocol_samples(protocol, "bbh_cot_fewshot", {"bbh_cot_fewshot_navigate": 250})
    assert alone["bbh_cot_fewshot_navigate"] == samples["bbh_cot_fewshot_navigate"]  # other tasks do not matter
    direct = protocol_samples(protocol, "bbh_fewshot", {"bbh_fewshot_navigate": 250})
    assert direct["bbh_fewshot_navigate"] == samples["bbh_cot_fewshot_navigate"]  # same problems CoT or direct
    other_seed = protocol_samples(Protocol("bbh", 40, 7), "bbh_cot_fewshot", sizes)
    assert other_seed["bbh_cot_fewshot_navigate"] != samples["bbh_cot_fewshot_navigate"]
    gsm = protocol_samples(Protocol("gsm8k", 200, 42), "gsm8k_cot", {"gsm8k_cot": GSM8K_TEST_SIZE})
    assert gsm == {"gsm8k_cot": sorted(subset(GSM8K_TEST_SIZE, 200, 42))}


def test_suites_carry_the_papers_protocols():
    assert protocols("leaderboard") == {"gsm8k_cot": Protocol("gsm8k", 200, 42),
                                        "bbh_cot_fewshot": Protocol("bbh", 50, 42)}
    assert protocols("mixture") == {}


# ---- scoring lm-eval's logged samples -------------------------------------------------------------------------


def _sample(doc_id, doc, text, filt="strict-match"):
    return {"doc_id": doc_id, "doc": doc, "resps": [[text]], "filtered_resps": ["[invalid]"], "filter": filt}


def test_score_samples_uses_raw_text_once_per_document():
    docs = [{"answer": "#### 8"}, {"answer": "#### 1,000"}, {"answer": "#### 3"}, {"answer": "#### -2"}]
    texts = ["The answer is 8.", "so 1000 in all", "It is 4.", "The result: -2"]
    samples = [_sample(i, d, t, f) for f in ("strict-match", "flexible-extract") for i, (d, t) in
               enumerate(zip(docs, texts, strict=True))]
    assert score_samples("gsm8k", samples) == {"exact_match": 75.0, "n": 4}


def test_bbh_average_over_tasks():
    a = [_sample(i, {"target": "(A)"}, "So the answer is (A).") for i in range(4)]  # 4/4
    b = [_sample(i, {"target": "Yes"}, "So the answer is No." if i else "So the answer is yes.") for i in range(2)]
    out = score_suite_task("bbh", ["t_a", "t_b"], {"t_a": a, "t_b": b})
    assert out["tasks"] == {"t_a": {"exact_match": 100.0, "n": 4}, "t_b": {"exact_match": 50.0, "n": 2}}
    assert out["exact_match"] == 75.0 and out["n"] == 6  # the mean over tasks, not over problems (83.3)


# ---- judges -----------------------------------------------------------------------------------------------


def test_flask_scale_reproduces_table2_row():
    """Seed 000 Table 2, LLaMA-2-7B on A: 47.6 55.4 58.8 54.8 48.0 50.4 88.0 81.6, average 60.6 - i.e. 1-5
    means 2.38 2.77 2.94 2.74 2.40 2.52 4.40 4.08 (x 20); their mean 3.02875 rounds to 3.03 -> 60.6."""
    means = dict(zip(pw.FLASK_SKILLS, (2.38, 2.77, 2.94, 2.74, 2.40, 2.52, 4.40, 4.08), strict=True))
    rows, replies = [], []
    for skill, mean in means.items():  # 100 instructions per skill whose ratings sum to 100 * mean
        total = round(mean * 100)
        ratings = [total // 100 + (1 if i < total % 100 else 0) for i in range(100)]
        for i, r in enumerate(ratings):
            rows.append({"id": f"{skill}{i}", "instruction": "q", "output": "r", "skills": [skill]})
            replies.append({"id": f"{skill}{i}", "reply": f"{skill}: {r}"})
    requests = pw.flask_requests(rows)
    table = pw.score_flask(requests, replies, round_like_table=True)
    expected = dict(zip(pw.FLASK_SKILLS, (47.6, 55.4, 58.8, 54.8, 48.0, 50.4, 88.0, 81.6), strict=True))
    for skill, value in expected.items():
        assert table[skill] == pytest.approx(value, abs=1e-9)
    assert table["average"] == pytest.approx(60.6, abs=1e-9)
    exact = pw.score_flask(requests, replies)
    assert exact["average"] == pytest.approx(3.02875 * 20, abs=1e-9)
    assert pw.flask_scale(5) == 100.0 and pw.flask_scale(1) == 20.0 and pw.flask_scale(2.5) == 50.0


PROMPT_EXCERPTS = ASSETS / "seed_prompts"  # the papers' figures, their own lines


def _words(text: str) -> list[str]:
    return text.replace("\u2019", "'").replace("\\_", "_").split()


def test_judge_prompts_are_the_papers_words():
    """Seed 002's Figure 4 (pairwise) and Figure 3 (quality rating) and seed 003's Figure 6, as the papers print
    them, word for word (the layout of lines is the Vicuna `pair-v1` prompt's, which the figures flatten)."""
    from instructjax.eval.judge_prompts import PAIRWISE_PROMPTS, QUALITY_PROMPTS

    seed002 = (PROMPT_EXCERPTS / "002_90d96a546d3b6616.txt").read_text()
    figure4 = next(line for line in seed002.splitlines() if line.startswith("System Prompt:"))
    system, user = figure4.removeprefix("System Prompt: ").split(" User Prompt: ")
    theirs = user.replace("{response\\_1}", "{answer_1}").replace("{response\\_2}", "{answer_2}")
    assert PAIRWISE_PROMPTS["seed002"].system == system
    assert _words(PAIRWISE_PROMPTS["seed002"].user) == _words(theirs)
    neutral = PAIRWISE_PROMPTS["seed002_length_neutral"].user  # Sec. 5: one criterion out, one sentence in
    assert _words(neutral.replace(" Do not allow the length of the responses to influence your evaluation.", "")) == \
        _words(theirs.replace("accuracy, level of details of", "accuracy of"))
    # Figure 3: (a) for rows without an input, (b) with; the instance in the system prompt, the rubric as the user's
    for has_input, part in zip((False, True), seed002.split("Figure 3:")[0].split("(a) Prompt for instances with no input.")
                               , strict=True):
        system, user = part.split("#### System Prompt:")[1].split("#### User Prompt:")
        user = user.split("(b) Prompt")[0]
        ours = QUALITY_PROMPTS[has_input]
        assert _words(ours.system) == _words(re.sub(r"\{(\w+)\}", lambda m: "{" + m[1].lower() + "}", system))
        assert _words(ours.user) == _words(user)
    # seed 003's Figure 6: the same words, once its line numbers are dropped and its misprint read as meant (the
    # first answer's markers say "Assistant 2")
    figure6 = [line for line in (PROMPT_EXCERPTS / "003_5f58a71acda3a4fb.txt").read_text().splitlines()
               if line.strip() and not line.strip().isdigit()]
    text = "\n".join(re.sub(r"^\d{4} ", "", line) for line in figure6).replace("-\n", "")  # "perfor-\nmance"
    text = text.split("**System Prompt**")[1].split("Figure 6")[0]
    system, user = text.split("**User Prompt**")
    user = user.replace("*Question*", "{question}").replace("*Answer 2*", "{answer_1}", 1) \
        .replace("*Answer 2*", "{answer_2}").replace("Assistant 2\u2019s", "Assistant 1\u2019s", 2)
    assert _words(PAIRWISE_PROMPTS["seed003"].system) == _words(system)
    assert _words(PAIRWISE_PROMPTS["seed003"].user) == _words(user)


def test_judge_protocols_per_paper():
    p = pw.JUDGE_PROTOCOLS
    assert p["alpacaeval"].max_new_tokens == 8192 and p["alpacaeval"].paper_says_length
    assert p["alpacaeval"].orders == "random" and p["alpacaeval"].scale is None
    assert p["pairwise"].scale == (1, 10) and p["pairwise"].orders == "both"
    assert p["flask"].scale == (1, 5) and p["flask"].orders == "single"


def test_pairwise_tie_rule_hand_computed():
    """Ten items, scores (shown first, shown second) in order ab (A first) then ba (B first).
    A's view, ab then ba: 0 +,+ win | 1 +,+ win | 2 =,= tie | 3 -,- lose | 4 -,- lose | 5 +,+ win |
    6 =,+ tie | 7 -,- lose | 8 =,- tie | 9 -,- lose: W/T/L = 3/3/4 (a win or loss needs both orders)."""
    recorded = [("9 2", "3 8"), ("7 6", "5 6"), ("8 8", "8 8"), ("6 7", "7 6"), ("2 9", "9 1"),
                ("10 9", "1 2"), ("5 5", "4 6"), ("3 4", "5 4"), ("6 6", "7 3"), ("4 8", "2 1")]
    a = [{"id": str(i), "instruction": "q", "output": f"A{i}"} for i in range(10)]
    b = [{"id": str(i), "instruction": "q", "output": f"B{i}"} for i in range(10)]
    requests = pw.pairwise_requests(a, b)
    replies = [{"id": f"{i}|{o}", "reply": recorded[i][k]} for i in range(10) for k, o in enumerate(("ab", "ba"))]
    r = pw.score_pairwise(requests, replies)
    assert (r.win, r.tie, r.lose) == (3, 3, 4)
    assert r.winning_score == pytest.approx((3 - 4) / 10 + 1)


# ---- the suite path through lm-eval, on local tasks ---------------------------------------------------------


def _write_tasks(root) -> str:
    """Offline lm-eval tasks shaped like gsm8k_cot (one task) and bbh_cot_fewshot (a group of two)."""
    def jsonl(name, rows):
        path = root / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    gsm = jsonl("gsm.jsonl", [{"question": f"What is {i} + {i + 1}?", "answer": f"{i} + {i + 1}\n#### {2 * i + 1}"}
                              for i in range(10)])
    (root / "ij_gsm.yaml").write_text(f"""task: ij_gsm
dataset_path: json
dataset_kwargs:
  data_files:
    test: {gsm}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer.split('####')[-1].strip()}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
""")
    for name, n in (("alpha", 6), ("beta", 5)):
        data = jsonl(f"{name}.jsonl", [{"input": f"{name} item {i}", "target": "(A)" if i % 2 == 0 else "(B)"}
                                       for i in range(n)])
        (root / f"ij_bbh_{name}.yaml").write_text(f"""task: ij_bbh_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{input}}}}\\nA: Let's think step by step.\\n"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
""")
    (root / "ij_bbh.yaml").write_text("""group: ij_bbh
task: [ij_bbh_alpha, ij_bbh_beta]
aggregate_metric_list:
  - metric: exact_match
    aggregation: mean
    weight_by_size: false
""")
    return str(root)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> str:
    """The tasks above and ij_broken (ij_gsm's YAML reading a file that does not exist) in one include path for
    the module: lm-eval's task index of it (every one of lm-eval's task YAMLs read, seconds) is built once."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    include = _write_tasks(root)
    (root / "ij_broken.yaml").write_text((root / "ij_gsm.yaml").read_text().replace("task: ij_gsm",
        "task: ij_broken").replace(str(root / "gsm.jsonl"), str(root / "gone.jsonl")))
    return include


@pytest.fixture(scope="module")
def seeded_run(tasks_dir, tmp_path_factory) -> tuple[dict, list[dict]]:
    """run_suite's summary of the oracle suite on the include path, and the samples it logged."""
    from instructjax.eval import suite as suite_mod
    from instructjax.eval.harness import run_suite

    _register_oracle()
    samples = tmp_path_factory.mktemp("seeded") / "samples.jsonl"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setitem(suite_mod.SUITES, "ij_proto", ORACLE_SUITE)
        out = run_suite("unused", "ij_proto", backend="ij_oracle", include_path=tasks_dir, samples_out=str(samples))
    return out, pw.read_jsonl(str(samples))


ORACLE_SUITE = (
    SuiteTask("GSM-like", "ij_gsm", 0, "exact_match", protocol=Protocol("gsm8k", 4, 42)),
    SuiteTask("BBH-like", "ij_bbh", 0, "exact_match", protocol=Protocol("bbh", 3, 42)),
)


def _register_oracle():
    """An lm-eval model that answers GSM-like problem i right unless i % 3 == 0, and always "(A)" on BBH."""
    import re as _re

    from lm_eval.api.model import LM
    from lm_eval.api.registry import MODEL_REGISTRY, register_model

    if "ij_oracle" in MODEL_REGISTRY:
        return

    @register_model("ij_oracle")
    class Oracle(LM):
        def __init__(self, **kwargs):
            super().__init__()

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            out = []
            for r in requests:
                m = _re.search(r"What is (\d+) \+ (\d+)\?\nA:$", r.args[0])
                if m:
                    i = int(m.group(1))
                    total = 2 * i + 1 + (1 if i % 3 == 0 else 0)
                    out.append(f" {i} + {i + 1} = {total}. The answer is {total:,}.")
                else:
                    out.append("The item is first. So the answer is (A).")
            return out


def test_a_failing_suite_task_loses_only_itself(tasks_dir, seeded_run, monkeypatch, capsys):
    """A task whose data cannot be read fails alone: one line naming it, an error in its place, the others of
    its lm-eval call scored as they would be without it."""
    from instructjax.eval import suite as suite_mod
    from instructjax.eval.harness import run_suite

    _register_oracle()
    include = tasks_dir
    alone, _ = seeded_run  # the same suite without ij_broken
    assert "ij_broken|0-shot" not in alone and "ij_gsm|0-shot" in alone
    monkeypatch.setitem(suite_mod.SUITES, "ij_proto", (*ORACLE_SUITE, SuiteTask("Broken", "ij_broken", 0, "x")))
    capsys.readouterr()
    out = run_suite("unused", "ij_proto", backend="ij_oracle", include_path=include)
    assert "error" in out.pop("ij_broken|0-shot") and out == alone
    named = [line for line in capsys.readouterr().err.splitlines() if line.startswith("instructjax:")]
    assert len(named) == 1 and "lm-eval task ij_broken (0-shot) failed" in named[0]
    monkeypatch.setitem(suite_mod.SUITES, "ij_proto", (SuiteTask("Broken", "ij_broken", 0, "x"),))
    from instructjax.core.errors import ConfigError

    with pytest.raises(ConfigError, match="ij_broken"):  # nothing scored at all: the failure itself, one line
        run_suite("unused", "ij_proto", backend="ij_oracle", include_path=include)


def test_run_suite_scores_the_seeded_subsets(seeded_run):
    out, logged = seeded_run
    gsm_ids = sorted(random.Random(42).sample(range(10), 4))  # the draw, written out independently
    assert sorted(r["doc_id"] for r in logged if r["task"] == "ij_gsm") == gsm_ids
    expected_gsm = 100 * sum(i % 3 != 0 for i in gsm_ids) / 4
    assert out["ij_gsm|0-shot"]["protocol"]["exact_match"] == expected_gsm
    assert out["ij_gsm|0-shot"]["protocol"]["n"] == 4
    per_task = {}
    for name, n in (("alpha", 6), ("beta", 5)):
        ids = sorted(random.Random(f"42/{name}").sample(range(n), 3))
        assert sorted(r["doc_id"] for r in logged if r["task"] == f"ij_bbh_{name}") == ids
        per_task[name] = 100 * sum(i % 2 == 0 for i in ids) / 3
    bbh = out["ij_bbh|0-shot"]["protocol"]
    assert bbh["tasks"]["ij_bbh_alpha"]["exact_match"] == pytest.approx(per_task["alpha"])
    assert bbh["exact_match"] == pytest.approx((per_task["alpha"] + per_task["beta"]) / 2)
    assert bbh["n"] == 6
    # lm-eval saw the same documents (its own exact match on the GSM-like task: the answer text is not the target)
    assert out["ij_gsm|0-shot"]["exact_match,none"] == 0.0


# ---- instructjax eval --config -------------------------------------------------------------------------------


def test_config_parts_of_the_papers_configs():
    from instructjax.core.config import load_config
    from instructjax.eval.config import eval_section
    from instructjax.eval.run import config_parts

    configs = REPO / "configs"
    parts = {name: config_parts(eval_section(load_config(configs / name).eval)) for name in (
        "seed000_acp/acp_ACP_llama2_7b.yaml", "seed002_selection/alpaca_longest_1k_llama2_7b.yaml",
        "seed004_tulu/tulu_human_gpt_llama1_7b.yaml")}
    assert parts == {"seed000_acp/acp_ACP_llama2_7b.yaml": ["suite", "codex", "flask"],
                     "seed002_selection/alpaca_longest_1k_llama2_7b.yaml": ["suite", "long_form", "pairwise"],
                     "seed004_tulu/tulu_human_gpt_llama1_7b.yaml": ["suite", "codex", "toxigen", "truthfulqa", "alpaca_eval"]}


class _FakeGenerator:
    """Records the sampling of each chat call; answers "out <instruction>"."""

    def __init__(self):
        self.calls = []

    def chat(self, conversations, sampling):
        self.calls.append(sampling)
        return [f"out {c[-1]['content']}" for c in conversations]


def test_judged_parts_generate_at_the_papers_length(tmp_path):
    from instructjax.eval.config import eval_section
    from instructjax.eval.run import run_judged

    rows = [{"id": str(i), "instruction": f"q{i}", "skills": ["factuality"]} for i in range(3)]
    for mode in ("pairwise", "alpaca_eval", "flask"):
        (tmp_path / mode).mkdir()
        pw.write_jsonl(tmp_path / mode / "prompts.jsonl", rows)
    others = [{"id": str(i), "instruction": f"q{i}", "output": f"other {i}"} for i in range(3)]
    pw.write_jsonl(tmp_path / "pairwise" / "against.jsonl", others)
    (tmp_path / "alpaca_eval" / "alpaca_eval_gpt4_baseline.json").write_text(json.dumps(others))  # AlpacaEval 2's set
    ev = eval_section({"pairwise": True, "alpaca_eval": True, "flask": {"max_new_tokens": 64},
                       "data_dir": str(tmp_path)})
    lengths = {}
    for mode in ("pairwise", "alpaca_eval", "flask"):
        gen = _FakeGenerator()
        result = run_judged(lambda: gen, ev, mode, str(tmp_path))  # noqa: B023
        lengths[mode] = (gen.calls[0].max_new_tokens, gen.calls[0].temperature)
        result = result["vs"]["against"] if mode == "pairwise" else result  # the default comparison's file
        assert "none yet" in result["replies"]
        requests = pw.read_jsonl(result["requests"])
        assert len(requests) == (6 if mode == "pairwise" else 3)
        texts = [r["messages"][-1]["content"] if mode == "alpaca_eval" else r["prompt"] for r in requests]
        assert sum("out q1" in t for t in texts) == (2 if mode == "pairwise" else 1)
    assert lengths == {"pairwise": (2048, 0.0), "alpaca_eval": (8192, 0.0), "flask": (64, 0.0)}


@pytest.mark.slow
def test_eval_config_runs_the_eval_block(tasks_dir, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from helpers.models import make_hf

    from instructjax.cli import main
    from instructjax.convert.saved import import_hf
    from instructjax.eval import suite as suite_mod

    monkeypatch.setitem(suite_mod.SUITES, "ij_proto", ORACLE_SUITE)
    include = tasks_dir
    run_dir = tmp_path / "run"
    import_hf(make_hf(tmp_path, "gqa", seed=3), str(run_dir))
    prompts = [{"id": str(i), "instruction": f"Say {w}.", "skills": ["Factuality", "conciseness"]}
               for i, w in enumerate(("hi", "yes", "no"))]
    other = [{"id": r["id"], "instruction": r["instruction"], "output": "B"} for r in prompts]
    for name, rows in (("p.jsonl", prompts), ("b.jsonl", other)):
        pw.write_jsonl(tmp_path / name, rows)
    # judge replies, recorded: pairwise items 0 and 2 won in both orders, 1 a tie -> (2 - 0) / 3 + 1
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    pw.write_jsonl(out_dir / "pairwise_vs_b_replies.jsonl", [
        {"id": i, "reply": r} for i, r in (("0|ab", "8 3"), ("0|ba", "2 9"), ("1|ab", "5 5"), ("1|ba", "6 4"),
                                           ("2|ab", "9 1"), ("2|ba", "1 9"))])
    (tmp_path / "run.yaml").write_text(f"""name: tiny
run_dir: {run_dir}
wandb: {{project: ij-test, mode: offline, dir: {tmp_path}}}
eval:
  suite: ij_proto
  include_path: {include}
  backend: instructjax
  batch_size: 4
  out_dir: {out_dir}
  pairwise: {{prompts: {tmp_path / 'p.jsonl'}, against: {{b: {tmp_path / 'b.jsonl'}, twin: twin}},
             max_new_tokens: 4}}
  alpaca_eval: {{against: {tmp_path / 'b.jsonl'}, max_new_tokens: 4}}
  flask: {{prompts: {tmp_path / 'p.jsonl'}, max_new_tokens: 4}}
""")
    assert main(["eval", "--config", str(tmp_path / "run.yaml")]) == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert results["parts"] == ["suite", "pairwise", "alpaca_eval", "flask"]
    assert results["model"] == str(run_dir)
    assert results["suite"]["ij_gsm|0-shot"]["protocol"]["n"] == 4
    assert results["suite"]["ij_bbh|0-shot"]["protocol"]["n"] == 6
    logged = pw.read_jsonl(str(out_dir / "suite_samples.jsonl"))
    assert sorted(r["doc_id"] for r in logged if r["task"] == "ij_gsm") == sorted(random.Random(42).sample(range(10), 4))
    pair = results["pairwise"]["vs"]["b"]
    assert (pair["win"], pair["tie"], pair["lose"]) == (2, 1, 0)
    assert pair["winning_score"] == pytest.approx(5 / 3)
    # the run named `twin` (beside this run's directory) has no outputs yet: that comparison waits for them
    twin = tmp_path / "twin" / "eval" / "pairwise_outputs.jsonl"
    assert results["pairwise"]["vs"]["twin"] == {
        "against": str(twin), "prompt": "seed002",
        "outputs": f"none yet: {twin} (evaluate that run first, then this one again)"}
    assert "none yet" in results["alpaca_eval"]["replies"]  # scored in tests/eval/test_alpacaeval.py
    # the numbers went to the run's W&B summary too (offline)
    from helpers import wandb_records

    from instructjax.core.tracking import run_id

    logged = wandb_records.summary(tmp_path, run_id(str(run_dir)))
    assert "eval/pairwise/vs/b/winning_score" in logged, (  # what there was, should this fail again (it has, rarely)
        sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("wandb/*/*")), sorted(logged))
    assert logged["eval/pairwise/vs/b/winning_score"] == pytest.approx(5 / 3)
    assert logged["eval/suite/ij_gsm|0-shot/protocol/n"] == 4
    assert "none yet" in results["flask"]["replies"]
    flask_requests = pw.read_jsonl(str(out_dir / "flask_requests.jsonl"))
    assert [r["skills"] for r in flask_requests] == [["factuality", "conciseness"]] * 3
    outputs = pw.read_jsonl(str(out_dir / "pairwise_outputs.jsonl"))
    assert [r["id"] for r in outputs] == ["0", "1", "2"]
    # the twin's outputs arrive: the sweep sees it, and the rerun judges them against this run's outputs as they
    # were (not generated again: an edited output shows in the requests), in seed 002's Figure 4 prompt
    from instructjax.cli.sweep import eval_todo
    from instructjax.core.config import load_config
    from instructjax.eval import generate
    from instructjax.eval import run as eval_run
    from instructjax.eval.judge_prompts import PAIRWISE_PROMPTS

    config = load_config(tmp_path / "run.yaml")
    assert eval_todo(config) == []
    twin.parent.mkdir(parents=True)
    pw.write_jsonl(twin, [{**r, "output": f"twin says {r['id']}"} for r in prompts])
    assert eval_todo(config) == ["pairwise"]
    ours = pw.read_jsonl(str(out_dir / "pairwise_outputs.jsonl"))
    pw.write_jsonl(out_dir / "pairwise_outputs.jsonl", [{**r, "output": f"edited {r['id']}"} for r in ours])
    monkeypatch.setattr(generate, "load_generator", None)  # nothing is generated
    results = eval_run.evaluate_config(config, only=eval_todo(config))
    assert results["pairwise"]["vs"]["b"]["winning_score"] == pytest.approx(5 / 3)
    assert "none yet" in results["pairwise"]["vs"]["twin"]["replies"] and results["suite"]
    requests = {r["id"]: r for r in pw.read_jsonl(str(out_dir / "pairwise_vs_twin_requests.jsonl"))}
    figure4 = PAIRWISE_PROMPTS["seed002"]
    assert requests["1|ba"]["system"] == figure4.system
    assert requests["1|ba"]["prompt"] == figure4.user.format(question="Say yes.", answer_1="twin says 1",
                                                             answer_2="edited 1")
    assert eval_todo(config) == []
    # a judged part whose input file is missing stops before any work, naming the key
    (tmp_path / "bad.yaml").write_text(f"name: bad\nrun_dir: {run_dir}\neval:\n  flask: {{prompts: nope.jsonl}}\n")
    assert main(["eval", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert main(["eval", "--config", str(tmp_path / "run.yaml"), "--only", "codex"]) == 2


def test_flask_subset_and_pairwise_scale():
    rows = [{"id": "a", "skills": ["Factuality", "Readability", "Conciseness"]},
            {"id": "b", "skills": ["Harmlessness", "Factuality", "Completeness"]},  # a skill outside the eight
            {"id": "c", "skills": ["logical correctness", "insightfulness", "comprehension"]},
            {"id": "d", "skills": ["Metacognition", "Readability", "Logical Efficiency"]}]
    assert [r["id"] for r in pw.flask_subset(rows)] == ["a", "c"]
    assert pw.parse_score_pair("10 1") == (10.0, 1.0)
    with pytest.raises(pw.DataError, match="outside the 1-10 scale"):
        pw.parse_score_pair("11 3", "x|ab")
    with pytest.raises(pw.DataError, match="outside the 1-10 scale"):
        pw.parse_score_pair("0 3")


def test_flask_cli_scores_on_the_papers_scale(tmp_path, capsys):
    from instructjax.cli import main

    rows = [{"id": str(i), "instruction": "q", "output": "r", "skills": ["Readability"]} for i in range(3)]
    pw.write_jsonl(tmp_path / "a.jsonl", rows)
    req = str(tmp_path / "req.jsonl")
    assert main(["eval", "pairwise", "requests", "--mode", "flask", "--a", str(tmp_path / "a.jsonl"),
                 "--requests", req]) == 0
    pw.write_jsonl(tmp_path / "rep.jsonl", [{"id": str(i), "reply": f"Readability: {s}"} for i, s in enumerate((4, 5, 5))])
    capsys.readouterr()
    assert main(["eval", "pairwise", "score", "--mode", "flask", "--requests", req, "--replies",
                 str(tmp_path / "rep.jsonl"), "--round-like-table"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores == pytest.approx({"readability": 93.4, "average": 93.4, "unparsed": 0})  # 14 / 3 = 4.67 -> x 20


def test_eval_config_errors_are_one_line(tmp_path, capsys):
    from instructjax.cli import main

    cases = {"eval:\n  suite: nope\n": "unknown eval suite 'nope'",
             "eval:\n  flask: {promts: x.jsonl}\n": "eval.flask.promts: unknown key; did you mean prompts?",
             "eval:\n  flask: {prompts: missing.jsonl}\n": "eval.flask.prompts: missing.jsonl does not exist",
             "eval: {}\n": "names nothing to run"}
    for i, (block, message) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(f"name: c\nrun_dir: {tmp_path / 'run'}\n{block}")
        assert main(["eval", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_quality_ratings_round_trip_through_the_cli(tmp_path):
    """Seed 002's quality ratings: Figure 3 (a) for a row without an input, (b) with Dolly's `context`; the rated
    rows carry the judge's first-line rating in `score`, which `selection: quality` ranks by."""
    from instructjax.cli import main
    from instructjax.eval.judge_prompts import QUALITY_PROMPTS

    rows = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"id": "d7", "instruction": "Summarise.", "context": "A long text.", "response": "Short."}]
    pw.write_jsonl(tmp_path / "train.jsonl", rows)
    assert main(["eval", "quality", "requests", "--data", str(tmp_path / "train.jsonl"),
                 "--requests", str(tmp_path / "req.jsonl")]) == 0
    requests = pw.read_jsonl(str(tmp_path / "req.jsonl"))
    assert [r["id"] for r in requests] == ["1", "d7"]
    assert requests[0]["system"].endswith("Instruction: Name a colour.\nResponse: Blue.")
    assert requests[1]["system"].endswith("Instruction: Summarise.\nInput: A long text.\nResponse: Short.")
    assert (requests[0]["prompt"], requests[1]["prompt"]) == (QUALITY_PROMPTS[False].user, QUALITY_PROMPTS[True].user)
    pw.write_jsonl(tmp_path / "rep.jsonl", [{"id": "d7", "reply": "\n4.5\nAccurate and brief."},
                                             {"id": "1", "reply": "Score: 3\nFine."}])
    assert main(["eval", "quality", "rate", "--data", str(tmp_path / "train.jsonl"), "--replies",
                 str(tmp_path / "rep.jsonl"), "--out", str(tmp_path / "rated.jsonl")]) == 0
    rated = pw.read_jsonl(str(tmp_path / "rated.jsonl"))
    assert rated == [{**rows[0], "score": 3.0}, {**rows[1], "score": 4.5}]
    # a rating off the 0-5 scale, a missing reply: one line naming the row, exit 2
    pw.write_jsonl(tmp_path / "bad.jsonl", [{"id": "1", "reply": "7"}, {"id": "d7", "reply": "2"}])
    assert main(["eval", "quality", "rate", "--data", str(tmp_path / "train.jsonl"), "--replies",
                 str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "x.jsonl")]) == 2
    pw.write_jsonl(tmp_path / "short.jsonl", [{"id": "1", "reply": "2"}])
    assert main(["eval", "quality", "rate", "--data", str(tmp_path / "train.jsonl"), "--replies",
                 str(tmp_path / "short.jsonl"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.slow
def test_a_judge_that_is_down_loses_only_its_part(tmp_path, capsys):
    """FLASK's judge refuses connections: one line naming the part, exit 2, and results.json keeps the pairwise
    part scored from its recorded replies; FLASK is left out of `parts`, so the next run asks again."""
    import socket

    pytest.importorskip("torch")
    from helpers.models import make_hf

    from instructjax.cli import main
    from instructjax.convert.saved import import_hf

    run_dir = tmp_path / "run"
    import_hf(make_hf(tmp_path, "gqa", seed=3), str(run_dir))
    prompts = [{"id": str(i), "instruction": f"Say {w}.", "skills": ["Factuality"]} for i, w in enumerate(("hi", "no"))]
    pw.write_jsonl(tmp_path / "p.jsonl", prompts)
    pw.write_jsonl(tmp_path / "b.jsonl", [{**r, "output": "B"} for r in prompts])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    pw.write_jsonl(out_dir / "pairwise_vs_b_replies.jsonl", [
        {"id": i, "reply": r} for i, r in (("0|ab", "8 3"), ("0|ba", "2 9"), ("1|ab", "5 5"), ("1|ba", "6 4"))])
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    (tmp_path / "run.yaml").write_text(f"""name: tiny
run_dir: {run_dir}
eval:
  batch_size: 4
  out_dir: {out_dir}
  pairwise: {{prompts: {tmp_path / 'p.jsonl'}, against: {{b: {tmp_path / 'b.jsonl'}}}, max_new_tokens: 4}}
  flask: {{prompts: {tmp_path / 'p.jsonl'}, max_new_tokens: 4, judge: {{base_url: {dead}, model: j, max_retries: 0}}}}
""")
    capsys.readouterr()
    assert main(["eval", "--config", str(tmp_path / "run.yaml")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("instructjax:") and "note:" not in line]
    assert len(err) == 2 and err[0].startswith("instructjax: eval flask:") and "pairwise" not in err[1]
    results = json.loads((out_dir / "results.json").read_text())
    assert results["parts"] == ["pairwise"] and "flask" in results["errors"] and "flask" not in results
    assert results["pairwise"]["vs"]["b"]["winning_score"] == pytest.approx((1 - 0) / 2 + 1)
    # an earlier results.json that held FLASK (scored then), rerun with FLASK alone and its judge down: FLASK
    # leaves `parts` (asked again next time), the pairwise part stays
    (out_dir / "results.json").write_text(json.dumps({**results, "parts": ["pairwise", "flask"], "flask": {"x": 1}}))
    assert main(["eval", "--config", str(tmp_path / "run.yaml"), "--only", "flask"]) == 2
    again = json.loads((out_dir / "results.json").read_text())
    assert again["parts"] == ["pairwise"] and "flask" in again["errors"]
