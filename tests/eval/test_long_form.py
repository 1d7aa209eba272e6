"""Seed 002's LongForm and ELI5 (METEOR) end to end through `instructjax eval --config`: a tiny imported model
answers local rows in the datasets' own schemas (LongForm's parquet, the `eli5` schema's jsonl), scored against
nltk's METEOR called here directly (evaluate's `meteor`: word_tokenize, alpha 0.9, beta 3, gamma 0.5) with each
ELI5 reference chosen by brute force. Offline: the NLTK data (a tiny but real WordNet database, an empty
punkt_tab model) is built in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.open_instruct_pinned import empty_punkt

from instructjax.core.errors import DataError
from instructjax.eval import long_form

nltk = pytest.importorskip("nltk")

LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
            "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
            "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
            "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
            "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
            "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
            "adj.ppl").split()
POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
# WordNet 3.0's car.n.01, travel.v.01, big.a.01, quickly.r.01. nltk's METEOR looks its synonyms up for the Porter
# stems left after the stem stage, so only words the stemmer leaves as they are (car/auto, go/travel) can match
SYNSETS = {"noun": [("noun.artifact", ["car", "auto", "automobile", "machine", "motorcar"], "a motor vehicle")],
           "verb": [("verb.motion", ["travel", "go", "move", "locomote"], "change location")],
           "adj": [("adj.all", ["large", "big"], "above average in size")],
           "adv": [("adv.all", ["quickly", "rapidly", "speedily", "apace"], "with speed")]}
SWAPS = {"car": "auto", "travel": "go"}  # synonyms in the tiny WordNet
HEADER = ("  1 This software and database is being provided to you, the LICENSEE, by Princeton University.\n"
          "  2 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.\n")

LONGFORM = [
    {"input": "Write a short note about a trip.", "output": "People travel to town in a car and buy things.",
     "source": "C4", "subset": "corpora"},
    {"input": "Explain what a house is.", "output": "A house is a building where a family lives.",
     "source": "Wikipedia", "subset": "corpora"},
    {"input": "Write an email to Bob.", "output": "Dear Bob, the meeting moved to Friday. Best, Alice.",
     "source": "Enron", "subset": "tasks"},
]
ELI5 = [
    {"q_id": "a1", "title": "Why is the sky blue?", "selftext": "",
     "answers": {"a_id": ["x", "y", "z"], "text": ["Because of the sea.", "Rayleigh scattering of sunlight.",
                                                   "Nobody knows."], "score": [3, 41, 7]}},
    {"q_id": "b2", "title": "How do cars move?", "selftext": "I mean the engine part.",
     "answers": {"a_id": ["p"], "text": ["The car engine burns fuel and turns the wheels."], "score": [12]}},
    {"q_id": "c3", "title": "What is money?", "selftext": "",
     "answers": {"a_id": ["m", "n"], "text": ["A large ledger of debts.", "Paper."], "score": [5, 5]}},
]


def make_wordnet(root: Path, synsets: dict) -> Path:
    """A WordNet database in the Princeton format nltk's WordNetCorpusReader reads: lexnames, data.* (lines at
    their byte offsets), index.*, *.exc, index.sense."""
    root.mkdir(parents=True)
    (root / "lexnames").write_text("".join(f"{i:02d}\t{name}\t{ {'noun': 1, 'verb': 2, 'adj': 3, 'adv': 4}[name.split('.')[0]] }\n"
                                           for i, name in enumerate(LEXNAMES)))
    for pos, p in POS.items():
        data, index = HEADER, {}
        for lexname, lemmas, gloss in synsets.get(pos, []):
            offset = len(data.encode())
            words = " ".join(f"{w} 0" for w in lemmas)
            data += f"{offset:08d} {LEXNAMES.index(lexname):02d} {p} {len(lemmas):02x} {words} 000 | {gloss}  \n"
            for w in lemmas:
                index.setdefault(w, []).append(offset)
        (root / f"data.{pos}").write_text(data)
        (root / f"index.{pos}").write_text(HEADER + "".join(
            f"{w} {p} {len(o)} 0 {len(o)} 0 {' '.join(f'{x:08d}' for x in o)}  \n" for w, o in sorted(index.items())))
        (root / f"{pos}.exc").write_text("")
    (root / "index.sense").write_text("")
    (root / "cntlist.rev").write_text("")
    return root


def make_nltk_data(root: Path, synsets: dict) -> Path:
    """An NLTK_DATA folder: corpora/wordnet and an (empty) English punkt_tab model."""
    make_wordnet(root / "corpora" / "wordnet", synsets)
    return empty_punkt(root)


def _reader(path: Path):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    with pytest.warns(UserWarning, match="multilingual"):
        return WordNetCorpusReader(str(path), None)


def _reference_meteor(predictions, references, wordnet) -> float:
    """METEOR as evaluate's `meteor` computes it, from nltk's own functions, x100."""
    from nltk.tokenize import word_tokenize
    from nltk.translate.meteor_score import single_meteor_score

    scores = [single_meteor_score(word_tokenize(r), word_tokenize(p), alpha=0.9, beta=3, gamma=0.5, wordnet=wordnet)
              for p, r in zip(predictions, references, strict=True)]
    return 100 * sum(scores) / len(scores)


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory):
    """nltk.data.path led by the tiny NLTK data (and a WordNet without synonyms, to compare with)."""
    root = tmp_path_factory.mktemp("nltk")
    data, empty = make_nltk_data(root / "data", SYNSETS), make_nltk_data(root / "empty", {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nltk.data, "path", [str(data), str(empty), *nltk.data.path])
        yield {"wordnet": _reader(data / "corpora" / "wordnet"), "empty": _reader(empty / "corpora" / "wordnet")}


def test_meteor_is_evaluates_and_uses_wordnet_synonyms(nltk_data):
    """`long_form.meteor` (nltk's default WordNet, found on the NLTK data path) equals nltk's METEOR with the tiny
    WordNet; without the synonyms (car/auto, go/travel) it scores lower."""
    predictions = ["They go to town in an auto.", "A house is where a family lives."]
    references = ["People travel to town in a car.", "A house is a building where a family lives."]
    mine = long_form.meteor(predictions, references)
    assert mine == pytest.approx(_reference_meteor(predictions, references, nltk_data["wordnet"]), abs=1e-9)
    assert mine > _reference_meteor(predictions, references, nltk_data["empty"]) + 5
    assert long_form.meteor(predictions, references, nltk_data["empty"]) == pytest.approx(
        _reference_meteor(predictions, references, nltk_data["empty"]), abs=1e-9)


def _best(row: dict) -> str:
    """Brute force: the answer with the most votes, the first of a tie."""
    answers = row["answers"]
    top = max(answers["score"])
    return next(t for t, s in zip(answers["text"], answers["score"], strict=True) if s == top)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, nltk_data):
    """Two `eval --config` passes of one tiny model: the rows above, then the same questions with references that
    hold the model's first answers (the ELI5 one among lower-voted decoys), so that METEOR is far from 0."""
    import pandas as pd
    from helpers.models import make_hf

    from instructjax.cli import main
    from instructjax.convert.saved import import_hf

    root = tmp_path_factory.mktemp("long_form")
    run_dir = root / "run"
    import_hf(make_hf(root, "gqa", seed=3), str(run_dir))

    def evaluate(longform: list[dict], eli5: list[dict], tag: str) -> dict:
        pd.DataFrame(longform).to_parquet(root / f"longform_{tag}.parquet")
        (root / f"eli5_{tag}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eli5))
        (root / "run.yaml").write_text(f"""name: long_form
run_dir: {run_dir}
eval:
  backend: instructjax
  batch_size: 4
  long_form: {{longform: {root / f'longform_{tag}.parquet'}, eli5: {root / f'eli5_{tag}.jsonl'}, max_new_tokens: 12}}
""")
        assert main(["eval", "--config", str(root / "run.yaml")]) == 0
        rows = [json.loads(line) for line in (run_dir / "eval" / "long_form_outputs.jsonl").read_text().splitlines()]
        return {"results": json.loads((run_dir / "eval" / "results.json").read_text()), "longform": longform,
                "eli5": eli5, "rows": {name: [r for r in rows if r["benchmark"] == name] for name in ("LongForm", "ELI5")}}

    first = evaluate(LONGFORM, ELI5, "first")
    said = {name: [r["output"] for r in rows] for name, rows in first["rows"].items()}
    longform = [{**r, "output": f"{o} {r['output']}"} for r, o in zip(LONGFORM, said["LongForm"], strict=True)]
    eli5 = [{**r, "answers": {"a_id": ["d1", "best", "d2"], "text": ["A decoy.", f"{o} so it is", "Another decoy."],
                              "score": [2, 9, 5]}} for r, o in zip(ELI5, said["ELI5"], strict=True)]
    return first, evaluate(longform, eli5, "second")


def test_long_form_and_eli5_end_to_end_equal_nltks_meteor(evaluated, nltk_data):
    """Each pass: the instructions and references are the rows' (LongForm's input and output; ELI5's title and
    its most-voted answer), each score and the means are nltk's METEOR of what the model said, x100."""
    assert [_best(r) for r in ELI5] == ["Rayleigh scattering of sunlight.",
                                        "The car engine burns fuel and turns the wheels.", "A large ledger of debts."]
    for run in evaluated:
        rows, results = run["rows"], run["results"]
        assert results["parts"] == ["long_form"] and results["long_form"]["n"] == {"LongForm": 3, "ELI5": 3}
        assert [(r["instruction"], r["reference"]) for r in rows["LongForm"]] == [
            (r["input"], r["output"]) for r in run["longform"]]
        assert [(r["id"], r["instruction"], r["reference"]) for r in rows["ELI5"]] == [
            (r["q_id"], r["title"], _best(r)) for r in run["eli5"]]  # the title alone, by default
        for name in ("LongForm", "ELI5"):
            outputs, references = [r["output"] for r in rows[name]], [r["reference"] for r in rows[name]]
            assert results["long_form"][name] == pytest.approx(
                _reference_meteor(outputs, references, nltk_data["wordnet"]), abs=1e-9)
            for r in rows[name]:
                assert 100 * r["meteor"] == pytest.approx(_reference_meteor([r["output"]], [r["reference"]],
                                                                            nltk_data["wordnet"]), abs=1e-9)
    first, second = evaluated
    assert all(o["output"].strip() for rows in first["rows"].values() for o in rows)
    for name in ("LongForm", "ELI5"):  # greedy: the same answers; now in the references, so METEOR is far from 0
        assert [r["output"] for r in second["rows"][name]] == [r["output"] for r in first["rows"][name]]
        assert second["results"]["long_form"][name] > 30 > first["results"]["long_form"][name]


def test_scores_of_a_model_that_echoes_the_reference_are_high(nltk_data, tmp_path):
    """run_long_form with a stand-in generator whose answers are the references with synonyms swapped in: both
    scores well above zero and equal to nltk's, the ELI5 question with its selftext when asked."""
    from instructjax.eval.config import LongFormSection

    answers = {}
    for r in LONGFORM:
        answers[r["input"]] = " ".join(SWAPS.get(w, w) for w in r["output"].split())
    questions = [r["title"] + (f"\n\n{r['selftext']}" if r["selftext"] else "") for r in ELI5]
    references = ["Rayleigh scattering of sunlight.", "The car engine burns fuel and turns the wheels.",
                  "A large ledger of debts."]
    for q, ref in zip(questions, references, strict=True):
        answers[q] = " ".join(SWAPS.get(w, w) for w in ref.split())

    class Echo:
        def chat(self, conversations, sampling):
            assert sampling.max_new_tokens == 512 and sampling.temperature == 0.0
            return [answers[c[-1]["content"]] for c in conversations]

    (tmp_path / "lf.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LONGFORM))
    (tmp_path / "eli5.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ELI5))
    result = long_form.run_long_form(Echo(), LongFormSection(eli5_selftext=True),
                                     {"LongForm": str(tmp_path / "lf.jsonl"), "ELI5": str(tmp_path / "eli5.jsonl")},
                                     str(tmp_path))
    lf_refs = [r["output"] for r in LONGFORM]
    assert result["LongForm"] == pytest.approx(_reference_meteor(
        [answers[r["input"]] for r in LONGFORM], lf_refs, nltk_data["wordnet"]), abs=1e-9)
    assert result["ELI5"] == pytest.approx(_reference_meteor(
        [answers[q] for q in questions], references, nltk_data["wordnet"]), abs=1e-9)
    assert result["LongForm"] > 80 and result["ELI5"] > 80
    assert result["LongForm"] > _reference_meteor([answers[r["input"]] for r in LONGFORM], lf_refs,
                                                  nltk_data["empty"]) + 5


def test_missing_wordnet_is_one_line(tmp_path, monkeypatch, capsys):
    """No WordNet on the NLTK data path: `eval --config` stops before loading anything, with one line naming it
    and how to get it."""
    from instructjax.cli import main

    data = tmp_path / "nltk"
    (data / "tokenizers" / "punkt_tab" / "english").mkdir(parents=True)  # punkt_tab there, WordNet not
    monkeypatch.setattr(nltk.data, "path", [str(data)])
    for name in ("lf.jsonl", "eli5.jsonl"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "run.yaml").write_text(f"""name: lf
run_dir: {tmp_path / 'run'}
max_steps: 0
model: {{init_from: {tmp_path / 'nowhere'}}}
eval: {{long_form: {{longform: {tmp_path / 'lf.jsonl'}, eli5: {tmp_path / 'eli5.jsonl'}}}}}
""")
    assert main(["eval", "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "wordnet (corpora/wordnet)" in err and "punkt_tab" not in err.split(";")[0]
    assert "python -m nltk.downloader wordnet punkt_tab" in err and "NLTK_DATA" in err
    with pytest.raises(long_form.NltkDataMissing):
        long_form.require_nltk_data()


def test_a_bad_row_is_one_line_naming_the_file_and_row(tmp_path):
    path = tmp_path / "eli5.jsonl"
    bad = {**ELI5[1], "answers": {"a_id": ["p"], "score": [3]}}  # no text
    path.write_text("".join(json.dumps(r) + "\n" for r in (ELI5[0], bad, ELI5[2])))
    with pytest.raises(DataError) as e:
        long_form.read_eli5(str(path))
    assert str(e.value) == f"file {path}, row 2: 'answers.text' is not a non-empty list of answers"
    path.write_text(json.dumps(ELI5[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=rf"^file {path}, row 2: malformed JSON"):
        long_form.read_eli5(str(path))
    lf = tmp_path / "lf.jsonl"
    lf.write_text(json.dumps(LONGFORM[0]) + "\n" + json.dumps({"input": "x", "output": ""}) + "\n")
    with pytest.raises(DataError, match=rf"^file {lf}, row 2: no 'output'"):
        long_form.read_longform(str(lf))


def test_seed002_configs_run_long_form_for_the_rows_of_tables_3_7_8():
    from instructjax.cli import experiment_grid

    on = {e.config["name"] for e in experiment_grid.seed002() if e.config["eval"].get("long_form")}
    rows = {f"{d}_{m}{s}_llama2_7b" for d, s in (("alpaca", "_1k"), ("dolly", "_1k"), ("wizardlm", "_4200"))
            for m in ("random", "kmeans", "quality", "longest")}
    assert on == {"base_llama2_7b", "alpaca_full_llama2_7b", "dolly_full_llama2_7b", "wizardlm_full_llama2_7b"} | rows


def test_report_reads_long_form_and_averages_avg1(tmp_path):
    from helpers.report_runs import read_csv, write_run

    from instructjax.report import families

    write_run(tmp_path, "base_llama2_7b", "max_steps: 0\nmodel: {preset: llama2-7b}\n"
              "experiment: {family: seed002, method: base}\n",
         {"model": "m", "parts": ["long_form"], "long_form": {"LongForm": 14.0, "ELI5": 11.0,
                                                              "n": {"LongForm": 2045, "ELI5": 1507}}})
    families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    for table in ("table3", "table7", "table8"):
        base = {r["Strategy"]: r for r in read_csv(tmp_path / "out" / f"seed002_{table}.csv")}["Base"]
        assert (base["LongForm (ours)"], base["ELI5 (ours)"], base["AVG1 (ours)"]) == ("14.0", "11.0", "12.5")
