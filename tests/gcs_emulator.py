"""A real GCS API emulator (gcp-storage-emulator) on 127.0.0.1 for the gs:// tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BUCKET = "anygpt-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """Starts `gcp-storage-emulator` with one default bucket; `env` points clients at it."""

    def __init__(self, bucket: str = BUCKET):
        self.bucket = bucket
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._data = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
        exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
        cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "gcp_storage_emulator"]
        self._proc = subprocess.Popen(
            [*cmd, "-d", self._data.name, "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--default-bucket", bucket, "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}", timeout=2).read()
                break
            except OSError:
                if self._proc.poll() is not None or time.time() > deadline:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    self.stop()
                    raise RuntimeError(
                        f"gcp-storage-emulator did not start: {err[-2000:]}"
                    ) from None
                time.sleep(0.2)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that send gcsfs and tensorstore to this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url}

    def uri(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *parts])

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._data.cleanup()
