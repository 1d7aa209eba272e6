"""Test set-up: 8 forced CPU devices for sharding tests, a cheap CPU compiler, quiet TensorFlow, no hub access."""

import os

# The CPU compiler's cheap settings: the tests' programs are small and run a few times, so LLVM's expensive passes
# cost more than they save (about 30% of a compile-bound file's CPU time), and XLA:CPU's older elemental emitters
# build a fusion in about half the time its MLIR fusion emitters take (tests/model/test_moe_expert_axis.py: 83 s ->
# 56 s, backend compile 49 s -> 28 s); every test's tolerance holds without them. Subprocesses inherit them
# (tests/meta/test_docs.py keeps them for a reader's one-device machine too).
CHEAP_COMPILER = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                  " --xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {CHEAP_COMPILER}")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # two test workers on two cores: torch's references one thread each
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The tokenized-task cache (instructjax.data.cache) of this test session: fresh, shared with subprocesses.
# Removed when the session ends (`pytest_sessionfinish`), like a passing test's tmp_path.
_SESSION_CACHE = None
if "INSTRUCTJAX_CACHE_DIR" not in os.environ:
    import tempfile

    _SESSION_CACHE = os.environ["INSTRUCTJAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="instructjax-test-cache-")

# JAX's persistent compilation cache of this test session (fresh, shared with subprocesses, removed at its end like the
# tokenized cache): a program compiled once (a resumed run's step, a docs page's repeat of a test's command, a second
# host's) is read back rather than compiled again. Only compilation is skipped: every test still traces, lowers and
# runs its programs.
_SESSION_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _SESSION_XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="instructjax-test-xla-")
# every program, however quick to compile (JAX's default keeps those over a second): most of the suite's programs are
# small, and the same tiny model's step compiles in many tests and processes
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import shutil  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402

collect_ignore_glob = ["assets/*"]  # pinned upstream code and test data (their own tests are data here)


def pytest_collection_modifyitems(items):
    """The files with the most slow tests first (each file's tests in their order): `make test` hands whole files to
    its two workers in this order, so the longest files start first rather than one of them keeping a worker busy at
    the end while the other waits."""
    slow: dict[str, int] = {}
    for item in items:
        slow[item.nodeid.split("::")[0]] = slow.get(item.nodeid.split("::")[0], 0) + bool(item.get_closest_marker("slow"))
    order = {file: i for i, file in enumerate(slow)}
    items.sort(key=lambda item: (-slow[item.nodeid.split("::")[0]], order[item.nodeid.split("::")[0]]))


def pytest_sessionfinish(session, exitstatus):
    for made in (_SESSION_CACHE, _SESSION_XLA_CACHE):  # made by this process (the xdist controller's: its workers
        if made:  # inherit them as set)
            shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="session")
def gcs_server():
    """A real GCS-API server on 127.0.0.1 (tests/helpers/gcs_emulator.py), reached through the standard emulator
    variables alone, set in this process's environment so every process a test starts sees them too."""
    from helpers.gcs_emulator import GCSEmulator

    with GCSEmulator() as server:
        os.environ.update(server.variables)
        yield server
        for key in server.variables:
            os.environ.pop(key, None)


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory):
    """(base URL, model directory) of `transformers serve` serving a tiny LLaMA with a chat template
    (tests/helpers/openai_server.py): a real OpenAI-compatible server, started once a session."""
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from helpers.openai_server import judge_model, serve

    root = tmp_path_factory.mktemp("openai_server")
    model = judge_model(str(root))
    with serve(model, str(root / "serve.log")) as url:
        yield url, model


@pytest.fixture
def bucket(gcs_server) -> str:
    """A fresh, empty bucket on the GCS-API server: "gs://NAME"."""
    return gcs_server.bucket(f"b-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def on_one_device():
    """The test's runs on the first of the session's 8 CPU devices alone (`helpers.host_devices.one_device`): for a test
    whose claim is not about sharding, no program split 8 ways over two cores (the same numbers, compiled and run in
    about a sixth less time)."""
    from helpers.host_devices import one_device

    with one_device():
        yield


@pytest.fixture
def new_command():
    """new_command(): from here on the test runs as a new command of this process does (`core.context`): it reads
    what was registered before, and starts with no task read, no hub table or dump cleaned, no digest kept."""
    from contextlib import ExitStack

    from instructjax.core.context import Context, current

    with ExitStack() as stack:

        def enter() -> None:
            stack.close()  # the command before: gone
            stack.enter_context(Context(parent=current().root))

        yield enter
