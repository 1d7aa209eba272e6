"""AlpacaEval 1 and 2 through the `alpaca_eval` package (eval/alpacaeval.py), end to end through `instructjax eval
--config` on a tiny imported model, the reference set in the package's format, the judge's replies recorded.

The expected numbers are computed here independently of our code: which output the judge's prompt shows first is
read off each request, the judge is made to prefer the model with a chosen probability (AlpacaEval 2: the logprobs
of its one-token verdict "m"/"M"; AlpacaEval 1: its ranking text), so the raw win rate is the mean of those
probabilities; the length-controlled win rate is the package's own `get_length_controlled_winrate` on annotations
built here from those probabilities and the outputs. The package's `df_gamed.csv` (a hub file) is a local file in
the same schema, in the Hugging Face cache layout.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

pytest.importorskip("alpaca_eval")

N = 12  # instructions: enough for the length-controlled GLM's 5-fold fit


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _gamed_csv(cache, rng):
    """tatsu-lab/alpaca_eval's df_gamed.csv (two length-gamed baselines per instruction), in the HF cache."""
    snapshot = cache / "datasets--tatsu-lab--alpaca_eval" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / "datasets--tatsu-lab--alpaca_eval" / "refs").mkdir()
    (cache / "datasets--tatsu-lab--alpaca_eval" / "refs" / "main").write_text("0" * 40)
    lines = ["model,index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline"]
    for model in ("gamed_verbose", "gamed_concise"):
        for i in range(N):
            lines.append(f"{model},{i},{rng.uniform(0.05, 0.95):.4f},{rng.uniform(-2, 2):.4f},"
                         f"{(i % 5 - 2) / 2:.2f},False")  # fmt: skip
    (snapshot / "df_gamed.csv").write_text("\n".join(lines) + "\n")


def _model_first(request, outputs: dict[str, str], reference: dict[str, str]) -> bool:
    """Whether the prompt shows the model's output before the reference's (read off the request's text)."""
    text = request["messages"][-1]["content"]
    instruction = next(i for i in outputs if f'"""{i}"""' in text)
    return text.index(f'"""{outputs[instruction]}"""') < text.index(f'"""{reference[instruction]}"""')


@pytest.mark.slow
def test_alpaca_eval_1_and_2_scores_are_the_packages_on_the_recorded_judge(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    import huggingface_hub.constants
    import pandas as pd
    from alpaca_eval.metrics import get_length_controlled_winrate
    from helpers.models import make_hf

    from instructjax.cli import main
    from instructjax.convert.saved import import_hf

    rng = random.Random(7)
    _gamed_csv(tmp_path / "hub", rng)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    run_dir = tmp_path / "run"
    import_hf(make_hf(tmp_path, "gqa", seed=3), str(run_dir))
    words = ["rain", "snow", "sun", "wind", "fog", "hail", "storm", "cloud", "frost", "mist", "dew", "sleet"]
    ae2 = [{"instruction": f"Describe {w}.", "output": f"{w.title()} " + "is weather. " * (1 + i % 4),
            "generator": "gpt4_1106_preview", "dataset": "helpful_base"} for i, w in enumerate(words)]
    ae1 = [{**row, "output": f"{row['output']}(davinci)", "generator": "text_davinci_003"} for row in ae2]
    (tmp_path / "ae2.json").write_text(json.dumps(ae2))
    _write_jsonl(tmp_path / "ae1.jsonl", ae1)
    config = tmp_path / "run.yaml"
    config.write_text(f"""name: ae
run_dir: {run_dir}
eval:
  backend: instructjax
  out_dir: {tmp_path / 'out2'}
  alpaca_eval: {{against: {tmp_path / 'ae2.json'}, max_new_tokens: 5}}
""")
    assert main(["eval", "--config", str(config)]) == 0
    out = tmp_path / "out2"
    waiting = json.loads((out / "results.json").read_text())["alpaca_eval"]
    assert waiting["annotator"] == "weighted_alpaca_eval_gpt4_turbo" and "none yet" in waiting["replies"]
    outputs = {r["instruction"]: r["output"] for r in _read_jsonl(out / "alpaca_eval_outputs.jsonl")}
    assert list(outputs) == [r["instruction"] for r in ae2]  # the set's instructions, in its order
    requests = _read_jsonl(out / "alpaca_eval_requests.jsonl")
    assert len(requests) == N and all(r["sampling"] == {"max_tokens": 1, "temperature": 1, "logprobs": True,
                                                        "top_logprobs": 5} for r in requests)  # fmt: skip
    assert requests[0]["messages"][0]["role"] == "system" and "leaderboard" in requests[0]["messages"][0]["content"]

    # the judge prefers the model's output with probability q (by instruction): logprobs of "m" (the first output)
    q = {r["instruction"]: rng.uniform(0.05, 0.95) for r in ae2}
    reference = {r["instruction"]: r["output"] for r in ae2}
    replies, firsts = [], 0
    for request in requests:
        text = request["messages"][-1]["content"]
        instruction = next(i for i in q if f'"""{i}"""' in text)
        first = _model_first(request, outputs, reference)
        firsts += first
        p_m = q[instruction] if first else 1 - q[instruction]
        top = [{"token": "m", "logprob": math.log(p_m)}, {"token": "M", "logprob": math.log(1 - p_m)},
               {"token": "The", "logprob": -9.0}]
        replies.append({"id": request["id"], "reply": "m" if p_m > 0.5 else "M",
                        "logprobs": {"content": [{"token": "m", "logprob": math.log(p_m), "top_logprobs": top}]}})
    assert 0 < firsts < N  # the package shuffled the order (both orders are exercised)
    _write_jsonl(out / "alpaca_eval_replies.jsonl", replies[1:])  # one reply missing: one line naming the file
    assert main(["eval", "--config", str(config), "--only", "alpaca_eval"]) == 2
    error, closing = capsys.readouterr().err.strip().splitlines()[-2:]  # the part's line, then the failed parts'
    assert error.startswith("instructjax: eval alpaca_eval: ") and closing.startswith("instructjax: error: eval: ")
    assert "alpaca_eval_replies.jsonl" in error and repr(requests[0]["id"]) in error and "1 missing" in error
    # a judge whose server gives no logprobs: one line naming the annotator that needs them
    _write_jsonl(out / "alpaca_eval_replies.jsonl", [{**r, "logprobs": None} for r in replies])
    assert main(["eval", "--config", str(config), "--only", "alpaca_eval"]) == 2
    error = [line for line in capsys.readouterr().err.strip().splitlines() if "instructjax: note:" not in line]
    assert len(error) == 2 and error[0].startswith("instructjax: eval alpaca_eval: "), error
    assert "weighted_alpaca_eval_gpt4_turbo" in error[0] and "logprobs" in error[0], error
    _write_jsonl(out / "alpaca_eval_replies.jsonl", replies)
    import io
    import logging

    logged, root = io.StringIO(), logging.getLogger()
    handler, level = logging.StreamHandler(logged), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # as a user's logging.basicConfig(level=INFO) would
    try:
        assert main(["eval", "--config", str(config), "--only", "alpaca_eval"]) == 0
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert logged.getvalue().count("\n") < 3, logged.getvalue()[:2000]  # Orbax's INFO lines (absl) stay quiet
    scored = json.loads((out / "results.json").read_text())["alpaca_eval"]
    assert scored["n"] == N and scored["unparsed"] == 0
    assert scored["win_rate"] == pytest.approx(100 * sum(q.values()) / N)
    annotations = pd.DataFrame({"instruction": list(reference), "output_1": list(reference.values()),
                                "output_2": [outputs[i] for i in reference], "preference": [1 + q[i] for i in reference],
                                "generator_1": "gpt4_1106_preview", "generator_2": "model",
                                "annotator": "weighted_alpaca_eval_gpt4_turbo"})  # fmt: skip
    expected = get_length_controlled_winrate(annotations, save_weights_dir=None)
    assert scored["length_controlled_winrate"] == pytest.approx(expected["length_controlled_winrate"])
    assert scored["length_controlled_winrate"] != pytest.approx(scored["win_rate"])  # the length term does act

    # AlpacaEval 1: the alpaca_eval_gpt4 annotator, ranking text, against Davinci-003 (no length control)
    config.write_text(config.read_text().replace("out2", "out1").replace(
        f"against: {tmp_path / 'ae2.json'}", f"against: {tmp_path / 'ae1.jsonl'}, annotator: alpaca_eval_gpt4"))
    assert main(["eval", "--config", str(config)]) == 0
    out = tmp_path / "out1"
    outputs = {r["instruction"]: r["output"] for r in _read_jsonl(out / "alpaca_eval_outputs.jsonl")}
    reference = {r["instruction"]: r["output"] for r in ae1}
    wins = {r["instruction"]: rng.random() < 0.5 for r in ae1}
    replies = []
    for request in _read_jsonl(out / "alpaca_eval_requests.jsonl"):
        assert request["sampling"] == {"max_tokens": 100, "temperature": 0}
        text = request["messages"][-1]["content"]
        instruction = next(i for i in wins if f'"""{i}"""' in text)
        best = "model_1" if wins[instruction] == _model_first(request, outputs, reference) else "model_2"
        other = "model_2" if best == "model_1" else "model_1"
        replies.append({"id": request["id"], "reply": f"[{{'model': '{best}', 'rank': 1}}, {{'model': '{other}', 'rank': 2}}]",
                        "instruction": instruction})
    replies[0]["reply"] = "I cannot rank these."  # a reply the annotator cannot read: counted, left out
    _write_jsonl(out / "alpaca_eval_replies.jsonl", replies)
    assert main(["eval", "--config", str(config), "--only", "alpaca_eval"]) == 0
    scored = json.loads((out / "results.json").read_text())["alpaca_eval"]
    assert scored["annotator"] == "alpaca_eval_gpt4" and "length_controlled_winrate" not in scored
    assert scored["unparsed"] == 1
    read = [wins[r["instruction"]] for r in replies[1:]]
    assert scored["win_rate"] == pytest.approx(100 * sum(read) / len(read))


def test_a_bad_reference_row_is_one_line_naming_file_and_row(tmp_path):
    from instructjax.core.errors import DataError
    from instructjax.eval.alpacaeval import read_reference

    (tmp_path / "ref.json").write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(DataError) as e:
        read_reference(str(tmp_path / "ref.json"))
    assert "ref.json" in str(e.value) and "row 2" in str(e.value) and "'output'" in str(e.value)
    assert "\n" not in str(e.value)


def test_every_reply_unreadable_is_one_line(tmp_path):
    """AlpacaEval 1's annotator reads none of the judge's replies: one line naming the part, how many replies and
    the annotator (then the line saying which part failed), exit 2, never a traceback, and none of the package's own
    log lines (its progress, each unread reply with its text)."""
    import dataclasses

    import jax
    import numpy as np
    from flax import nnx

    from instructjax.cli import main
    from instructjax.core.checkpoint import save_params
    from instructjax.data.encoding.tokenizer import Tokenizer, default_tokenizer_path
    from instructjax.model.decoder import Decoder
    from instructjax.model.presets import preset

    config = preset("tiny", dtype="float32")
    shapes = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype), shapes)
    tokenizer = {"files": Tokenizer.load(default_tokenizer_path()).files(), "template": "tulu"}
    save_params(tmp_path / "run", params, dataclasses.asdict(config), step=1, tokenizer=tokenizer)
    ae1 = [{"instruction": f"Describe {w}.", "output": f"{w.title()} is weather.", "generator": "text_davinci_003"}
           for w in ("rain", "snow", "sun")]
    _write_jsonl(tmp_path / "ae1.jsonl", ae1)
    out = tmp_path / "out"
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"""name: ae
run_dir: {tmp_path / 'run'}
eval:
  batch_size: 4
  out_dir: {out}
  alpaca_eval: {{against: {tmp_path / 'ae1.jsonl'}, annotator: alpaca_eval_gpt4, max_new_tokens: 2}}
""")
    assert main(["eval", "--config", str(run_yaml)]) == 0  # the requests, no replies yet
    requests = _read_jsonl(out / "alpaca_eval_requests.jsonl")
    assert len(requests) == len(ae1)
    _write_jsonl(out / "alpaca_eval_replies.jsonl", [{"id": r["id"], "reply": "I cannot rank these."}
                                                     for r in requests])
    # a process of its own: its stderr as a user sees it (the package's root-logger lines included, were they there)
    done = subprocess.run([sys.executable, "-m", "instructjax.cli", "eval", "--config", str(run_yaml), "--only",
                           "alpaca_eval"], capture_output=True, text=True, timeout=600)
    err = done.stderr.splitlines()
    assert done.returncode == 2 and len(err) == 2 and err[0].startswith("instructjax: eval alpaca_eval: "), done.stderr
    assert f"none of the judge's {len(ae1)} replies could be read by annotator 'alpaca_eval_gpt4'" in err[0], err
    assert err[1].startswith("instructjax: error: eval: alpaca_eval failed"), err
    assert "alpaca_eval" in json.loads((out / "results.json").read_text())["errors"]
