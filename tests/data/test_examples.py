"""A pipeline's statistics (`sources.rows.PipelineStats`): what each pipeline's calls of `tokenized.examples` read,
tokenized and cached is counted into the stats they pass, and `cache_report` says it; no count is kept anywhere else."""

import json

from instructjax.data.blends.specs import TaskSpec
from instructjax.data.sources.rows import PipelineStats
from instructjax.data.tokenized import examples as examples_lib


def _rows(tmp_path, n: int) -> TaskSpec:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Say {i}.", "input": "", "output": f"{i}."}) + "\n"
                            for i in range(n)))
    return TaskSpec(source="alpaca", data_files=(str(path),))


def test_each_pipeline_counts_what_it_read_tokenized_and_cached(tmp_path, monkeypatch, new_command):
    """The first pipeline reads, tokenizes and writes the cache file; the next (a new process: nothing kept in
    memory) reads the file back and counts nothing read or tokenized."""
    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(tmp_path / "cache"))
    spec, name = _rows(tmp_path, 12), "stats_cached"
    first = PipelineStats()
    made = examples_lib.encoded_examples(name, spec=spec, stats=first)
    assert len(made) == 12 and (first.rows_read, first.conversations_tokenized) == (12, 12)
    assert set(first.cache_files) == {name} and first.written == {str(first.cache_files[name])}
    assert first.from_cache == set()
    new_command()  # what a new process starts with
    second = PipelineStats()
    assert len(examples_lib.encoded_examples(name, spec=spec, stats=second)) == 12
    assert second == PipelineStats(cache_files=first.cache_files, from_cache={name})
    assert examples_lib.cache_report([name, "other"], second) == (
        f"1 of 2 task(s) read from the tokenized cache ({tmp_path / 'cache'}); "
        "0 row(s) read and 0 conversation(s) tokenized here")
    assert examples_lib.cache_report([name], first).endswith("; 12 row(s) read and 12 conversation(s) tokenized here")


def test_a_stream_continued_by_another_pipeline_counts_into_that_one(tmp_path, monkeypatch):
    """A subset's stream is kept in memory: a larger subset asked for later reads on from where it stopped, and what
    that reads counts into the pipeline that asked, not the one that began the stream."""
    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", "off")
    spec, name = _rows(tmp_path, 40), "stats_continued"
    first, second = PipelineStats(), PipelineStats()
    assert len(examples_lib.encoded_examples(name, 5, seed=3, spec=spec, stats=first)) == 5
    before = (first.rows_read, first.conversations_tokenized)
    assert 5 <= before[0] < 40 and before[1] >= 5
    assert len(examples_lib.encoded_examples(name, 40, seed=3, spec=spec, stats=second)) == 40
    assert (first.rows_read, first.conversations_tokenized) == before
    assert first.rows_read + second.rows_read == 40 and first.conversations_tokenized + second.conversations_tokenized == 40
    assert examples_lib.cache_report([name], second) == (
        f"the tokenized cache is off; {second.rows_read} row(s) read and {second.conversations_tokenized} "
        "conversation(s) tokenized here")
