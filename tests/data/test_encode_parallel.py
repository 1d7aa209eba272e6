"""Encoding in batches on every core (`data.encode_pool`) against one process encoding one conversation at a
time: examples byte for byte, order, reports, positions and cache files, on every built-in task and on the
hand-written hub rows; read errors raised where they were raised one at a time, and again when asked
again. ShareGPT's split from round lengths against the split that tokenizes every candidate block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import ASSETS

from instructjax.core.errors import DataError
from instructjax.data.blends import specs
from instructjax.data.blends.specs import BUILTIN, SelectionSpec, TaskSpec
from instructjax.data.encoding import pool, templates
from instructjax.data.encoding.encode import Segments, encode_conversation, encode_conversations
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.schema import Conversation
from instructjax.data.sources.dialogues import split_blocks
from instructjax.data.sources.registry import SOURCES
from instructjax.data.sources.rows import PipelineStats
from instructjax.data.tokenized import examples

HUB = ASSETS / "hub"


@pytest.fixture(scope="module", autouse=True)
def _stop_the_pool():
    yield
    pool.shutdown()


@pytest.fixture
def encode_as(monkeypatch, new_command):
    """encode_as(parallel, cache_dir): the next reads encode one conversation at a time in this process, or in
    batches of 4 over a pool of 3 worker processes from the first conversation on (a stream's last batch in parts
    of 1 or more)."""

    def switch(parallel: bool, cache_dir: Path) -> None:
        monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(cache_dir))
        monkeypatch.setenv("INSTRUCTJAX_ENCODE_WORKERS", "3" if parallel else "0")
        monkeypatch.setattr(pool, "IN_PROCESS", 0)
        monkeypatch.setattr(pool, "BATCH", 4)
        monkeypatch.setattr(pool, "LAST_PART", 1)  # a stream's last batch cut over the workers
        new_command()

    yield switch


def outcome(name: str, takes: list[tuple[int | None, int | None]], new_command) -> list:
    """Everything a caller can see of task `name` after each (count, seed) read, each from a new process's
    state: the examples (bytes), their order in file order, the report and the positions, then a larger
    take of the same subset (it continues the stream)."""
    seen = []
    for count, seed in takes:
        new_command()
        got = [examples.encoded_examples(name, count, seed)]
        if seed is not None:
            got.append(examples.encoded_examples(name, count, seed, in_file_order=True))
            got.append(examples.encoded_examples(name, 3 * count, seed))
        report = examples.task_report(name, seed)
        stream = examples.streams()[(name, specs.task(name), seed)]
        seen.append(([[(ex["tokens"].dtype.str, ex["tokens"].tobytes(), ex["loss_mask"].dtype.str,
                        ex["loss_mask"].tobytes(), ex["conversation"], ex["id"]) for ex in exs] for exs in got],
                     report.as_dict(), report.rows, stream.positions))
    return seen


def tasks() -> dict[str, list[tuple[int | None, int | None]]]:
    """Task name -> the reads to compare: every built-in task (subsets: read as far as needed), the hub rows
    of every source whole, at the run's length and at 24 tokens (truncated, untrainable, split), and a
    selection task and short ShareGPT blocks on the built-in rows."""
    out = {}
    for source in SOURCES:
        out[f"{source}_builtin"] = [(4, 0)]
        hub = str(next(p for p in HUB.iterdir() if p.stem == source))
        for suffix, length, takes in (("", None, [(None, None)]), ("_short", 24, [(None, None), (1, 0)])):
            specs.add_task(f"parallel_hub_{source}{suffix}", TaskSpec(source=source, data_files=(hub,), max_length=length))
            out[f"parallel_hub_{source}{suffix}"] = takes
    specs.add_task("parallel_selected", TaskSpec(source="alpaca", data_files=(BUILTIN,),
                                                 selection=SelectionSpec("longest", k=9)))
    specs.add_task("parallel_blocks", TaskSpec(source="sharegpt", data_files=(BUILTIN,), max_length=200))
    out.update(parallel_selected=[(None, None), (4, 0)], parallel_blocks=[(4, 0), (7, 2)])
    return out


def test_the_parallel_path_equals_one_conversation_at_a_time(encode_as, tmp_path, new_command):
    reads = tasks()
    encode_as(False, tmp_path / "serial")
    serial = {name: outcome(name, takes, new_command) for name, takes in reads.items()}
    encode_as(True, tmp_path / "parallel")
    parallel = {name: outcome(name, takes, new_command) for name, takes in reads.items()}
    for name in reads:
        assert parallel[name] == serial[name], name
    assert any(r[1]["split"] for r in serial["parallel_blocks"]) and serial["parallel_hub_sharegpt_short"][0][1]["untrainable"]
    files = {p.name: p.read_bytes() for p in (tmp_path / "serial").glob("*.tok")}
    assert files and files == {p.name: p.read_bytes() for p in (tmp_path / "parallel").glob("*.tok")}


def test_a_task_read_ahead_gives_what_it_gives_read_alone(encode_as, tmp_path, new_command):
    """The next task of a mixture starts reading while the one before finishes (`examples.read_ahead`, what a
    prepare or a run does between tasks): its examples, report, counts and cache file are those of the task read
    alone, and a bad row read ahead is raised when its task is asked for, not before."""
    def seen(name: str) -> tuple:
        stats = PipelineStats()
        got = examples.encoded_examples(name, stats=stats)
        return ([(ex["tokens"].tobytes(), ex["loss_mask"].tobytes(), ex["id"]) for ex in got],
                examples.task_report(name).as_dict(), stats.rows_read, stats.conversations_tokenized)

    encode_as(True, tmp_path / "alone")
    alone = seen("dolly_builtin")
    encode_as(True, tmp_path / "ahead")
    spec = specs.task("dolly_builtin")
    examples.encoded_examples("alpaca_builtin", then=lambda: examples.read_ahead("dolly_builtin", spec))
    assert examples._ahead()[("dolly_builtin", spec, None)].counted.conversations_tokenized > 0  # before it is asked
    assert seen("dolly_builtin") == alone and alone[3] > 0
    files = {p.name: p.read_bytes() for p in (tmp_path / "alone").glob("dolly*.tok")}
    assert files and files == {p.name: p.read_bytes() for p in (tmp_path / "ahead").glob("dolly*.tok")}

    specs.add_task("ahead_bad", TaskSpec(source="sharegpt", data_files=(str(long_and_bad_rows(tmp_path / "r.jsonl")),),
                                         max_length=40))
    examples.read_ahead("ahead_bad", specs.task("ahead_bad"))
    with pytest.raises(DataError, match="row 2: missing field 'conversations'"):
        examples.encoded_examples("ahead_bad")


def long_and_bad_rows(path: Path) -> Path:
    """ShareGPT rows: a long conversation (blocks of one round at 40 tokens), one without its turns, a short one."""
    rounds = [{"from": who, "value": f"turn {k} " + "words " * 8} for k in range(6) for who in ("human", "gpt")]
    rows = [{"id": "long", "conversations": rounds}, {"id": "bad"}, {"id": "short", "conversations": rounds[:2]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("parallel", [False, True])
def test_a_bad_row_is_raised_when_reached_and_again_when_asked_again(parallel, encode_as, tmp_path):
    """Taking 3 examples needs the first row alone (its blocks): the bad second row, read ahead in batches, is
    not raised and not counted; taking them all raises on it, and raises again the next time (the read is
    not kept half done)."""
    specs.add_task("parallel_bad", TaskSpec(source="sharegpt", data_files=(str(long_and_bad_rows(tmp_path / "r.jsonl")),),
                                            max_length=40))
    encode_as(parallel, "off")
    first = examples.encoded_examples("parallel_bad", 3)
    assert [ex["id"] for ex in first] == ["sharegpt-long-b0", "sharegpt-long-b1", "sharegpt-long-b2"]
    assert examples.streams()[("parallel_bad", specs.task("parallel_bad"), None)].report.as_dict()["read"] == 1
    for _ in range(2):
        with pytest.raises(DataError, match="row 2: missing field 'conversations'"):
            examples.encoded_examples("parallel_bad")


def test_an_encoding_error_is_raised_where_one_at_a_time_raises_it(encode_as, tmp_path, monkeypatch):
    """A template (registered here, so encoded in this process) that fails on one conversation: the batch
    holding it is encoded one by one, the examples before it are taken, and it raises when it is reached."""

    def pieces(messages, meta, eos):
        if "explode" in messages[0]["content"]:
            raise ValueError("the template cannot render this one")
        return templates.get_template("tulu").pieces(messages, meta, eos)

    fragile = templates.ChatTemplate("parallel_fragile", pieces, "", "")
    rows = [{"instruction": "explode" if k == 5 else f"task {k}", "input": "", "output": "done"} for k in range(8)]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for parallel in (False, True):
        encode_as(parallel, "off")
        templates.register_template(fragile)  # the command's own: gone with it
        specs.add_task("parallel_fragile", TaskSpec(source="alpaca", data_files=(str(tmp_path / "rows.jsonl"),),
                                                    template="parallel_fragile"))
        assert len(examples.encoded_examples("parallel_fragile", 5)) == 5  # the sixth row is not needed
        with pytest.raises(ValueError, match="cannot render"):
            examples.encoded_examples("parallel_fragile")


# ---- ShareGPT's split ------------------------------------------------------------------------------------


def conversation(rng: np.random.Generator, rounds: int, system: bool) -> Conversation:
    words = ["alpha", "beta", "gamma", "δέλτα", "数据", "code()", "\n", "  ", "x=1;", "</s>"]
    text = lambda n: " ".join(rng.choice(words, n)).strip() or "empty"  # noqa: E731
    messages = [{"role": "system", "content": text(5)}] if system else []
    for _ in range(rounds):
        messages += [{"role": "user", "content": text(int(rng.integers(1, 30)))},
                     {"role": "assistant", "content": text(int(rng.integers(1, 60)))}]
    return Conversation(messages, "sharegpt", f"sharegpt-{rng.integers(1 << 30)}", {"k": 1})


def quadratic_blocks(conv: Conversation, template: str, tok: Tokenizer, max_length: int) -> list[tuple]:
    """The split as it was: every candidate block encoded afresh (the reference)."""
    def length(messages):
        return len(encode_conversation(Conversation(messages, conv.source, conv.id), template, tok))

    found = split_blocks(conv.messages, max_length, length)
    if len(found) == 1:
        blocks = [conv]
    else:
        blocks = [Conversation(b, conv.source, f"{conv.id}-b{k}", {**conv.meta, "block": k, "blocks": len(found)})
                  for k, b in enumerate(found)]
    return [(b.to_json(), b.id, encode_conversation(b, template, tok, max_length)) for b in blocks]


@pytest.fixture(scope="module")
def split_tokenizers(tmp_path_factory):
    """The built-in SentencePiece model (adds BOS) and a byte-level BPE (no BOS: a segment starts the row)."""
    from helpers.pretrained_models import bpe_tokenizer

    return [Tokenizer.load(), Tokenizer.load(bpe_tokenizer(str(tmp_path_factory.mktemp("bpe"))))]


def same(ours: list, reference: list) -> bool:
    return [(j, i, e.tokens.tobytes(), e.loss_mask.tobytes(), e.n_trained, e.truncated) for j, i, e in ours] == \
        [(j, i, e.tokens.tobytes(), e.loss_mask.tobytes(), e.n_trained, e.truncated) for j, i, e in reference]


def test_blocks_from_round_lengths_equal_the_quadratic_split(split_tokenizers):
    rng = np.random.default_rng(0)
    convs = [conversation(rng, int(rng.integers(1, 9)), bool(rng.integers(2))) for _ in range(8)]
    splits = 0
    for tok in split_tokenizers:
        for template in templates.template_names():
            for max_length in (60, 300):
                job = pool.Job(template, tok.path, max_length, split_long=True)
                for conv, (pieces, split, _) in zip(convs, pool.encode_rows(job, convs), strict=True):
                    reference = quadratic_blocks(conv, template, tok, max_length)
                    if not encode_conversation(conv, template, tok, max_length).truncated or conv.rounds == 1:
                        reference = [(conv.to_json(), conv.id, encode_conversation(conv, template, tok, max_length))]
                    ours = [(p.conversation, p.id, p) for p in pieces]
                    assert [(j, i) for j, i, _ in ours] == [(j, i) for j, i, _ in reference]
                    for (_, _, p), (_, _, e) in zip(ours, reference, strict=True):
                        assert (p.tokens.tobytes(), p.loss_mask.tobytes(), p.n_trained, p.truncated) == \
                            (e.tokens.tobytes(), e.loss_mask.tobytes(), e.n_trained, e.truncated)
                    assert split == (len(reference) > 1)
                    splits += split
    assert splits > 20


def test_a_block_found_over_the_row_is_split_again_the_exact_way(monkeypatch):
    """Lengths that fall short (as a tokenizer merging across rounds would make them) put a block over the row;
    its encoding shows it, and the conversation is split by encoding every candidate."""
    tok, template, max_length = Tokenizer.load(), "tulu", 250
    conv = conversation(np.random.default_rng(3), 8, False)
    exact = pool.count_tokens
    short = lambda c, t, k, s=None: exact(c, t, k, s) - (80 if s is not None else 0)  # noqa: E731
    too_long = split_blocks(conv.messages, max_length, lambda m: short(Conversation(m, "x", "x"), template, tok, Segments(tok)))
    monkeypatch.setattr(pool, "count_tokens", short)
    pieces = pool._blocks(conv, pool.Job(template, tok.path, max_length, True), tok, Segments(tok))
    reference = quadratic_blocks(conv, template, tok, max_length)
    assert len(too_long) < len(reference)  # the short lengths alone would put blocks over the row
    assert [(c.to_json(), c.id) for c, _ in pieces] == [(j, i) for j, i, _ in reference]


def test_a_batch_encodes_each_conversation_as_alone(split_tokenizers):
    rng = np.random.default_rng(1)
    convs = [conversation(rng, int(rng.integers(1, 4)), bool(rng.integers(2))) for _ in range(10)]
    for tok in split_tokenizers:
        for template in templates.template_names():
            for max_length in (None, 40):
                batch = encode_conversations(convs, template, tok, max_length)
                for conv, got in zip(convs, batch, strict=True):
                    alone = encode_conversation(conv, template, tok, max_length)
                    assert got.tokens.tobytes() == alone.tokens.tobytes() and got.tokens.dtype == np.int32
                    assert got.loss_mask.tobytes() == alone.loss_mask.tobytes()
                    assert (got.n_trained, got.truncated) == (alone.n_trained, alone.truncated)


def test_workers_do_not_run_a_script_again(tmp_path, split_tokenizers):
    """A script that encodes at its top level (no `if __name__ == "__main__":`) runs once, not once more in
    each worker process (multiprocessing's spawn would import it again in every worker)."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "from instructjax.data.encoding import pool\n"
        "from instructjax.data.schema import Conversation\n"
        "print('script ran', flush=True)\n"
        "conv = Conversation([{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}], 'x', 'x-0')\n"
        f"job = pool.Job('tulu', {split_tokenizers[1].path!r}, 64, False)\n"
        "print(len(pool._unpack(pool._submit(1, pool._encode_packed, job, [conv]).result())), flush=True)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["script ran", "1"]


def test_workers_end_when_their_main_process_dies_without_stopping_them(tmp_path):
    """A main process that exits without shutting the pool down (killed, or ended by JAX's distributed runtime when
    another host died) leaves no worker behind: they ignore SIGTERM, and one left running holds the main process's
    stdout and stderr open, so whoever reads them (CI, a launcher) waits for ever."""
    import subprocess
    import sys
    import time

    script = tmp_path / "script.py"
    script.write_text(
        "import os\n"
        "from instructjax.data.encoding import pool, workers\n"
        "from instructjax.data.schema import Conversation\n"
        "conv = Conversation([{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}], 'x', 'x-0')\n"
        "job = pool.Job('tulu', None, 64, False)\n"
        "print(len(pool._unpack(pool._submit(1, pool._encode_packed, job, [conv]).result())), flush=True)\n"
        "print(*workers.worker_pool().executor._processes, flush=True)\n"
        "os._exit(3)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)  # pipes: waits
    assert out.returncode == 3, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "1" and lines[1]
    def running(pid: str) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie has ended
        except FileNotFoundError:
            return False

    deadline, alive = time.monotonic() + 10, lines[1].split()
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if running(pid)]
    assert not alive
