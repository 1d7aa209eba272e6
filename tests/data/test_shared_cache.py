"""Hosts build one tokenized cache together, and `data prepare` builds it ahead of `train`, through the real
CLI in real processes (gloo collectives, JAX's distributed runtime), counting the conversations each process
tokenizes and reads (tests/helpers/fault_worker.py FAULT_COUNT_ENCODED, FAULT_COUNT_READ):

- 2 hosts starting cold on one cache directory tokenize, together, exactly the conversations one process
  tokenizes (each once); the cache files equal the one-process files byte for byte; the losses are equal;
- 4 hosts, one of which dies as it starts tokenizing: the others stop with one line naming it (JAX's heartbeat,
  INSTRUCTJAX_HEARTBEAT_SECONDS); the pieces the others finished stay, and a restart on 2 hosts (`data prepare`;
  piece names do not depend on the host count) tokenizes only the rest, ending with the same bytes;
- host 0 (the coordinator) killed mid-build: the other exits at once, with one line naming it (a host other than
  0 lost is the 4-host case above: after the heartbeat timeout);
- two concurrent 2-host `data prepare` runs on one directory both finish, with the one-process bytes;
- a host that skips a collective (its cache lookup failed alone) stops both hosts at once with one line, even
  when that host is slow to say so (host 0, the coordinator, exits last);
- each host reads (fetches and adapts) only its share of the rows (`data prepare`: the same pipeline as `train`'s):
  of a task that keeps 40 of 600 rows, 20 each of 2 hosts; of one that keeps all 600, about 150 each of 4 hosts;
- a conversation that fails to tokenize is recorded in its piece: the same one line on both hosts, and again
  on a restart (which reads the piece back);
- `data prepare --config` stopped by Ctrl-C during its first task: that task is finished and cached, the command
  exits 75 with one line; run again it tokenizes the rest alone; then `train` with the same config tokenizes nothing.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

from helpers import ASSETS, REPO, WORKER  # noqa: E402
from helpers.host_devices import xla_flags  # noqa: E402

RAW_SHAREGPT = ASSETS / "sharegpt_raw" / "sharegpt_html.json"  # 21 rows
RUN = ["model.preset=tiny", "model.dtype=float32", "optim.lr=3e-3", "log_every=1", "mesh.data=4", "mesh.fsdp=2",
       "data.prefetch=0", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128", "data.global_batch=8",
       "data.pack_window=64", "max_steps=2"]  # fmt: skip
PREPARE = ("data", "prepare")  # the data side alone: what a build of the cache proves needs no training step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(hosts: int, cache: Path, run_dir: Path, dies: int | None = None, *, command: tuple[str, ...] = ("train",),
          args: list[str] = RUN, env_of=None, start: bool = True):
    """`instructjax train` (or `command`) on `hosts` processes sharing `cache`: per host (exit code, stderr,
    conversations it tokenized; None when it did not exit cleanly). Host `dies` dies as it starts tokenizing;
    `env_of(i)`: more environment for host i. `start=False`: the started processes, not waited for."""
    port, procs = _free_port(), []
    for i in range(hosts):
        env = {**os.environ, "XLA_FLAGS": xla_flags(8 // hosts), "JAX_PLATFORMS": "cpu",
               "INSTRUCTJAX_CACHE_DIR": str(cache), "INSTRUCTJAX_HEARTBEAT_SECONDS": "10",
               "FAULT_COUNT_ENCODED": f"{run_dir}.count{i}", **(env_of(i) if env_of else {})}  # fmt: skip
        if hosts > 1:
            env |= {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(hosts),
                    "JAX_PROCESS_ID": str(i)}  # fmt: skip
        if i == dies:
            env["FAULT_DIE_TOKENIZING"] = "1"
        cmd = [sys.executable, str(WORKER), *command, "--config", "/dev/null", *args, f"run_dir={run_dir}"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return wait(procs, run_dir) if start else (procs, run_dir)


def wait(procs, run_dir: Path) -> list[tuple[int, str, int | None]]:
    out = []
    for i, p in enumerate(procs):
        try:
            _, err = p.communicate(timeout=600)
        finally:
            if p.poll() is None:
                p.kill()
        counted = Path(f"{run_dir}.count{i}")
        out.append((p.returncode, err, int(counted.read_text()) if counted.exists() else None))
    return out


def gloo_timed_out(results: list[tuple[int, str, int | None]]) -> bool:
    """Whether a host failed as Gloo's connection between the hosts timed out (XLA's CPU collectives, set up at a
    run's first step: a host much slower to get there, on a loaded machine), which says nothing of the cache."""
    return any(code != 0 and "gloo" in err.lower() and ("timed out" in err.lower() or "timeout" in err.lower())
               for code, err, _ in results)  # fmt: skip


def train_again_if_gloo_timed_out(hosts: int, cache: Path, run_dir: Path) -> list[tuple[int, str, int | None]]:
    """`train(hosts, cache, run_dir)`, run once more from nothing (cache, run and counts removed) when it failed
    only as Gloo's connection timed out."""
    results = train(hosts, cache, run_dir)
    if hosts > 1 and gloo_timed_out(results):
        for made in (cache, run_dir, *(Path(f"{run_dir}.count{i}") for i in range(hosts))):
            shutil.rmtree(made, ignore_errors=True) if made.is_dir() else made.unlink(missing_ok=True)
        results = train(hosts, cache, run_dir)
    return results


def wait_after_death(procs, run_dir: Path, dead: int) -> tuple[list[tuple[int, str, int | None]], float]:
    """`wait`, and when host `dead` exited (it dies early, saying little): the others' stop is timed from its
    death, not from the start of processes a loaded machine may be slow to start."""
    deadline = time.monotonic() + 600
    while procs[dead].poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    died = time.monotonic()
    return wait(procs, run_dir), died


def error_lines(err: str) -> list[str]:
    """Every line that speaks of an error (JAX's own report of a lost host included, were it shown)."""
    return [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]


def files(cache: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(cache.iterdir())}


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def pieces_done(cache: Path) -> int:
    """Conversations in the finished piece files a stopped build left (named FIRST-END)."""
    done = 0
    for piece in cache.glob("*.pieces/*"):
        if not piece.name.startswith("."):
            first, end = map(int, piece.name.split("-"))
            done += end - first
    return done


def test_hosts_share_one_cache_and_a_lost_host_costs_only_its_piece(tmp_path):
    (code, err, alone), = train(1, tmp_path / "one", tmp_path / "run1")
    assert code == 0, err[-3000:]
    reference = files(tmp_path / "one")
    assert alone > 0 and len(reference) == 3

    shared = train_again_if_gloo_timed_out(2, tmp_path / "two", tmp_path / "run2")  # hosts that run a step
    assert all(code == 0 for code, _, _ in shared), [err[-3000:] for _, err, _ in shared]
    counts = [n for _, _, n in shared]
    assert all(n > 0 for n in counts) and sum(counts) == alone, counts  # each conversation once, split
    assert files(tmp_path / "two") == reference
    assert losses(tmp_path / "run2") == pytest.approx(losses(tmp_path / "run1"), rel=1e-6)

    lost, died = wait_after_death(*train(4, tmp_path / "four", tmp_path / "run4a", dies=3, start=False), dead=3)
    assert lost[3][0] == 9 and time.monotonic() - died < 90  # JAX's heartbeat: 10 s here, 100 s by default
    for code, err, _ in lost[:3]:
        errors = error_lines(err)
        assert code != 0 and len(errors) == 1 and "host 3 stopped sending heartbeats" in errors[0], err[-3000:]
    done = pieces_done(tmp_path / "four")
    assert done > 0 and not list((tmp_path / "four").glob("*.tok"))

    again = train(2, tmp_path / "four", tmp_path / "run4b", command=PREPARE, args=RUN[:-1])  # another host count
    assert all(code == 0 for code, _, _ in again), [err[-3000:] for _, err, _ in again]
    assert sum(n for _, _, n in again) == alone - done  # only what the lost run did not finish
    assert files(tmp_path / "four") == reference  # the pieces are gone, the files are the one-process ones
    REFERENCE.update(reference)


REFERENCE: dict[str, bytes] = {}  # the one-process cache files of RUN (the test above)


def test_the_coordinator_killed_mid_build_stops_the_other_at_once_with_one_line(tmp_path):
    """Host 0, the coordinator of JAX's distributed runtime, dies: host 1 exits with one line naming it. (A host other
    than 0 that dies is found by the heartbeat: the test above, whose host 3 dies among 4.)"""
    (dead, alive), died = wait_after_death(*train(2, tmp_path / "cache", tmp_path / "run", dies=0, start=False),
                                           dead=0)  # fmt: skip
    assert dead[0] == 9 and alive[0] != 0
    errors = error_lines(alive[1])
    assert len(errors) == 1 and "host 0 (the coordinator of JAX's distributed runtime) stopped" in errors[0], \
        alive[1][-3000:]
    assert time.monotonic() - died < 90  # at once: not after JAX's heartbeat timeout (10 s here; 100 s by default)


def test_two_concurrent_prepares_on_one_directory_both_finish_with_the_same_bytes(tmp_path):
    first = train(2, tmp_path / "cache", tmp_path / "a", command=PREPARE, args=RUN[:-1], start=False)
    second = train(2, tmp_path / "cache", tmp_path / "b", command=PREPARE, args=RUN[:-1], start=False)
    for results in (wait(*first), wait(*second)):
        assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, err, _ in results]
    assert not list((tmp_path / "cache").glob("*.pieces"))
    if REFERENCE:  # the one-process files, when the test above ran in this process
        assert files(tmp_path / "cache") == REFERENCE
    else:
        assert len(files(tmp_path / "cache")) == 3


def test_a_host_that_skips_a_collective_stops_every_host_with_one_line(tmp_path):
    started = time.monotonic()
    env_of = lambda i: {"FAULT_ALONE": "1", "FAULT_SLOW_DISAGREE": "3"} if i == 1 else {}  # noqa: E731
    results = train(2, tmp_path / "cache", tmp_path / "run", env_of=env_of)  # host 0 must wait for host 1's line
    for code, err, _ in results:
        errors = error_lines(err)
        assert code == 2 and len(errors) == 1, err[-3000:]
        assert "host 1 entered collective 'plan'" in errors[0] or "host 0 entered collective 'shared-dir/" in errors[0]
        assert "the hosts ran different steps" in errors[0]
    assert time.monotonic() - started < 120


def _rows(tmp_path: Path, n: int, marked: int | None = None) -> Path:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"Say {i}.", "input": "",
                                        "output": ("BROKEN " if i == marked else "") + f"{i} " * 12}) + "\n"
                            for i in range(n)))  # fmt: skip
    return rows


def _trees(tmp_path: Path, n: int) -> Path:
    """`n` OASST1 trees of 5 messages (a prompt, two ranked replies, a follow-up and its answer), the last
    tree's follow-up hanging below a message of the first tree."""
    rows, path = [], tmp_path / "trees.jsonl"
    for t in range(n):
        ids = [f"t{t}-{k}" for k in range(5)]
        parents = [None, ids[0], ids[0], ids[1] if t < n - 1 else "t0-1", ids[3]]
        for k, (mid, parent) in enumerate(zip(ids, parents, strict=True)):
            rows.append({"message_id": mid, "parent_id": parent, "role": "prompter" if k in (0, 3) else "assistant",
                         "text": f"Message {k} of tree {t}.", "rank": k % 2, "lang": "en", "message_tree_id": f"t{t}",
                         "deleted": False})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _subset_args(rows: Path, count: int | None, trees: Path | None = None, **options) -> list[str]:
    define = {"tasks": {"mine": {"source": "alpaca", "data_files": [str(rows)], "source_options": options}},
              "mixtures": {"mine_mix": {"mode": "epoch", "counts": {"mine": count}}}}
    if trees is not None:  # and a raw ShareGPT dump, cleaned as FastChat cleans it
        define["tasks"]["trees"] = {"source": "oasst1", "data_files": [str(trees)]}
        define["tasks"]["dump"] = {"source": "sharegpt", "data_files": [str(RAW_SHAREGPT)],
                                   "source_options": {"clean": "fastchat"}}
        define["mixtures"]["mine_mix"]["counts"] |= {"trees": None, "dump": None}
    return [a for a in RUN if not a.startswith("data.mixture")] + ["data.mixture=mine_mix", f"define={json.dumps(define)}"]


def test_each_host_reads_only_its_share_of_the_rows(tmp_path):
    """Rows read = fetched and adapted (FAULT_COUNT_READ), by `data prepare` (train's own data side: no step is
    needed to count reads). A task keeping 40 of 600 rows: one process reads
    them and its read-ahead; 2 hosts read the 40 only, half each. A task keeping all of a pool of 550 of the
    600 rows, all of 60 OASST1 trees (300 messages, two trees joined) and all of a raw ShareGPT dump of 21 rows:
    one process reads 1442 (550 drawn, then visited; the trees; the dump cleaned, then visited),
    4 hosts 1442 in all, about a quarter each (pieces of 8 or 9 rows drawing and visiting, of 1 or 2 trees, of
    a row of the dump). The files are one process's."""
    rows, trees = _rows(tmp_path, 600), _trees(tmp_path, 60)
    count = lambda tag: (lambda i: {"FAULT_COUNT_READ": str(tmp_path / f"{tag}{i}.read")})  # noqa: E731
    read = lambda tag, hosts: [int((tmp_path / f"{tag}{i}.read").read_text()) for i in range(hosts)]  # noqa: E731
    for tag, hosts, kept in (("one", 1, 40), ("two", 2, 40), ("all1", 1, None), ("all4", 4, None)):
        args = _subset_args(rows, kept, **({"per_part": 550, "trees": trees} if kept is None else {}))
        results = train(hosts, tmp_path / tag, tmp_path / f"run-{tag}", args=[a for a in args if a != "max_steps=2"],
                        env_of=count(tag), command=PREPARE)  # fmt: skip
        assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, err, _ in results]
    (alone,) = read("one", 1)
    assert 40 <= alone < 600  # one process reads what it keeps (and what its read-ahead needs), not every row
    assert read("two", 2) == [20, 20] and files(tmp_path / "two") == files(tmp_path / "one")
    assert read("all1", 1) == [1442] and sum(read("all4", 4)) == 1442 and max(read("all4", 4)) <= 380
    assert files(tmp_path / "all4") == files(tmp_path / "all1")


def test_a_failed_conversation_is_the_same_line_on_every_host_and_restart(tmp_path):
    args = _subset_args(_rows(tmp_path, 120, marked=70), None)
    fault = lambda i: {"FAULT_FAIL_ENCODING": "BROKEN"}  # noqa: E731
    seen = []
    for _ in range(2):  # the second run finds the pieces, the failed one included, and reads them back
        results = train(2, tmp_path / "cache", tmp_path / "run", args=args, env_of=fault)
        for code, err, _ in results:
            errors = error_lines(err)
            assert code == 2 and len(errors) == 1 and "cannot be tokenized" in errors[0], err[-3000:]
            seen.append(errors[0])
    assert len(set(seen)) == 1, seen  # both hosts, both runs
    assert list((tmp_path / "cache").glob("*.pieces/*"))  # kept: nothing was written from them


def test_prepare_then_train_tokenizes_nothing(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(1),
           "INSTRUCTJAX_CACHE_DIR": str(tmp_path / "cache"),
           "FAULT_COUNT_ENCODED": str(tmp_path / "prepare.count")}  # fmt: skip
    config = REPO / "configs" / "quickstart.yaml"
    command = [sys.executable, str(WORKER), "data", "prepare", "--config", str(config), "max_steps=2"]
    stopped = subprocess.run(command, env={**env, "FAULT_SIGINT_AFTER_TASK": "1"}, capture_output=True, text=True,
                             timeout=600)  # Ctrl-C while the first task is tokenized  # fmt: skip
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("instructjax: stopped before task")]
    assert stopped.returncode == 75 and len(lines) == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert f"the tasks read before it are in the tokenized cache ({tmp_path / 'cache'})" in lines[0]
    assert len([f for f in (tmp_path / "cache").iterdir() if f.is_file()]) == 1, sorted((tmp_path / "cache").iterdir())
    prepare = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    assert "2 written now, 1 there already" in prepare.stdout, prepare.stdout
    assert f"train starts from it: INSTRUCTJAX_CACHE_DIR={tmp_path / 'cache'} instructjax train" in prepare.stdout
    assert int((tmp_path / "prepare.count").read_text()) > 0

    env["FAULT_COUNT_ENCODED"] = str(tmp_path / "train.count")
    run = subprocess.run([sys.executable, str(WORKER), "train", "--config", str(config), "max_steps=2",
                          f"run_dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert int((tmp_path / "train.count").read_text()) == 0
    assert "data: 3 of 3 task(s) read from the tokenized cache" in run.stdout  # what train itself says
    assert "; 0 row(s) read and 0 conversation(s) tokenized here" in run.stdout


# ---- in one process: pieces replayed against the one-process read ------------------------------------------

def _bad_rows(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} " * 9} for i in range(90)]
    rows[17] = {"instruction": "no output"}  # a bad row: skipped (and counted), or raised where one process raises
    rows[40]["output"] = ""  # nothing to train on
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("task, seed, count", [("cot_builtin", None, None), ("sharegpt_builtin", 0, 60),
                                               ("dolly_builtin", 5, 30), ("oasst1_builtin", 1, 40),
                                               ("skip", 2, None), ("skip", None, 50), ("error", None, None),
                                               ("error", 3, 10), ("pool skip", 4, None), ("pool error", None, 5)])  # fmt: skip
def test_pieces_replayed_in_order_give_the_one_process_examples_report_and_errors(tmp_path, task, seed, count):
    """The units of a task (rows of a pooled, a split and a plain source; a tree source's conversations; bad rows
    skipped or raised; a pool of 64 of 90 rows drawn in two rounds when the bad row is a candidate), made into
    pieces in reverse order and pickled as a host writes them, then replayed: the examples, report, positions
    and error of the task's own one-process stream. The pools' candidate rows are judged alike, in pieces."""
    import pickle

    from helpers.pieces import reverse_pickled_share

    from instructjax.data.blends import specs
    from instructjax.data.blends.specs import TaskSpec
    from instructjax.data.tokenized import shared, stream

    policy, pooled = task.split()[-1], task.startswith("pool")
    spec = TaskSpec("alpaca", (str(_bad_rows(tmp_path)),), on_bad_row=policy,
                    source_options=(("per_part", 64),) if pooled else ()) if policy in ("skip", "error") \
        else specs.task(task)  # fmt: skip
    draws = []

    def share(fn, items):
        draws.append(len(items))
        return reverse_pickled_share(shared.PIECES)(fn, items)

    try:
        units, job = shared.units_of(task, spec, seed, share), stream.job_of(spec)
    except Exception as exc:  # noqa: BLE001 - a bad row met while drawing the pool: the one-process error
        with pytest.raises(type(exc)) as direct:
            stream.TaskStream(task, spec, seed).take(count)
        assert str(direct.value) == str(exc) and policy == "error", exc
        return
    assert len(draws) == (2 if pooled else task == "cot_builtin"), draws  # the bad row is the 34th candidate

    def make(lo, hi, spans):
        made = [pickle.dumps(units.encode(job, a, b)) for a, b in reversed(spans)]
        return [pickle.loads(p) for p in reversed(made)], True

    assert shared.rounds(units, count, make) is None
    replayed, direct = stream.TaskStream(task, spec, seed, results=units.replay()), stream.TaskStream(task, spec, seed)

    def taken(s):
        try:
            return [(e["tokens"].tolist(), e["loss_mask"].tolist(), e["id"]) for e in s.take(count)], s.report
        except Exception as exc:  # noqa: BLE001 - compared
            return f"{type(exc).__name__}: {exc}"

    want = taken(direct)
    assert taken(replayed) == want and replayed.positions == direct.positions
    assert isinstance(want, str) == (task == "error" and count is None), want  # 10 of 90 rows miss the bad one
