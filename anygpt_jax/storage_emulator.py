"""A GCS JSON API emulator (the `gcp-storage-emulator` package) on 127.0.0.1.

The tests and the input-pipeline benchmark run every gs:// path against it; a user can
dry-run a pod recipe the same way:

    python -m anygpt_jax.storage_emulator --bucket my-bucket   # prints the variables to export
"""

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
    """Starts `gcp-storage-emulator` with one default bucket; `env` points clients at it.

    Needs the package (`pip install gcp-storage-emulator`, part of this project's test extra).
    """

    def __init__(self, bucket: str = BUCKET):
        self.bucket = bucket
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._data = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
        # Its log goes to a file: it logs a traceback whenever a client drops a ranged read
        # early, and an unread pipe would fill and stall the emulator.
        self._log = open(os.path.join(self._data.name, "emulator.log"), "wb")  # local: temp
        exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
        found = os.path.exists(exe)  # local: the interpreter's own scripts directory
        cmd = [exe] if found else [sys.executable, "-m", "gcp_storage_emulator"]
        self._proc = subprocess.Popen(
            [*cmd, "-d", os.path.join(self._data.name, "data"), "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--default-bucket", bucket, "-q"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}", timeout=2).read()
                break
            except OSError:
                if self._proc.poll() is not None or time.time() > deadline:
                    self.stop(keep_log=True)
                    err = self.log_tail()
                    self._data.cleanup()
                    raise RuntimeError(
                        f"gcp-storage-emulator did not start: {err}"
                    ) from None
                time.sleep(0.2)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that send gcsfs and tensorstore to this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url}

    def uri(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *parts])

    def log_tail(self, n: int = 2000) -> str:
        """The end of the emulator's log."""
        with open(self._log.name, "rb") as f:  # local: our temp log
            return f.read().decode(errors="replace")[-n:]

    def stop(self, keep_log: bool = False) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._log.close()
        if not keep_log:
            self._data.cleanup()


def main() -> None:
    """Runs an emulator until interrupted, printing the environment that points clients at it."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m anygpt_jax.storage_emulator",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bucket", default=BUCKET, help="the bucket to create")
    a = p.parse_args()
    emulator = GcsEmulator(a.bucket)
    for k, v in emulator.env.items():
        print(f"export {k}={v}")
    print(f"# gs://{a.bucket}/ is served from 127.0.0.1:{emulator.port}; Ctrl-C stops it",
          flush=True)
    try:
        emulator._proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
