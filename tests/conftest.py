"""Test set-up: 8 forced CPU devices for sharding tests, quiet TensorFlow, no hub access."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The tokenized-task cache (instructjax.data.cache) of this test session: fresh, shared with subprocesses.
if "INSTRUCTJAX_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["INSTRUCTJAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="instructjax-test-cache-")
