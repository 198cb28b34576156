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
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "anygpt_jax.storage_emulator", "--port", str(self.port),
             "--data_dir", os.path.join(self._data.name, "data"), "--bucket", bucket, "--quiet"],
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


def _serve(port: int, data_dir: str, bucket: str, quiet: bool) -> None:
    """Runs gcp-storage-emulator in this process, with what tensorstore needs added.

    Its media downloads carry no `x-goog-generation` header, which tensorstore reads on every
    GET (orbax's OCDBT checkpoints read their manifest back and fail with "Malformed
    StorageGeneration"); GCS sends it, so it is added here.
    """
    import logging

    from gcp_storage_emulator import server as emulator_server
    from gcp_storage_emulator.handlers import objects

    original = objects.download

    def download(request, response, storage, *args, **kwargs):
        original(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # noqa: BLE001 - a missing object already answered 404
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
        response["x-goog-stored-content-length"] = str(obj["size"])

    objects.download = download  # objects.get serves `?alt=media` through this name
    for _, handlers in emulator_server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is original:
                handlers[method] = download
    logging.getLogger("").setLevel(logging.CRITICAL if quiet else logging.INFO)
    server = emulator_server.create_server(
        "127.0.0.1", port, in_memory=False, default_bucket=bucket, data_dir=data_dir
    )
    server.run()


def main() -> None:
    """Serves an emulator until interrupted; prints the environment that points clients at it."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m anygpt_jax.storage_emulator",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bucket", default=BUCKET, help="the bucket to create")
    p.add_argument("--port", type=int, default=9023)
    p.add_argument("--data_dir", default=None,
                   help="where objects are kept (default: a temporary directory)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gcs-emulator-") as tmp:
        if not a.quiet:
            url = f"http://127.0.0.1:{a.port}"
            print(f"export STORAGE_EMULATOR_HOST={url}\nexport TENSORSTORE_GCS_HTTP_URL={url}\n"
                  f"# gs://{a.bucket}/ is served on 127.0.0.1:{a.port}; Ctrl-C stops it",
                  flush=True)
        try:
            _serve(a.port, a.data_dir or tmp, a.bucket, a.quiet)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
