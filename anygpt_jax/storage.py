"""One storage layer for every path a user gives: local paths and gs:// URLs alike.

Paths are `etils.epath.Path`s, the layer orbax already uses, so model directories,
checkpoints, shards, vocabularies and outputs all go through one client. For gs:// that client
is gcsfs (not TensorFlow's file system, whose endpoints are fixed), so the standard
STORAGE_EMULATOR_HOST variable sends every gs:// access of the project to an emulator; it is
passed on to tensorstore (orbax's array I/O) as TENSORSTORE_GCS_HTTP_URL.

Object stores have no atomic rename, so directories are committed with markers:
`output_dir` writes `.anygpt_incomplete` first and `.anygpt_commit` last (on local disks it
also keeps the temp-then-rename it always had). Readers call `require_committed`. Single
files are written whole (`write_bytes`): an object appears only once its upload finishes, a
local file through a rename.

Libraries that can only write local files (TFRecordWriter, tf.summary, tf.train.Checkpoint,
jax.profiler) write into a `MirroredDir` whose files are uploaded on `sync()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Any

# Read once per process by etils and gcsfs, so set before either resolves a gs:// path:
# epath would pick TensorFlow's gs:// client (fixed endpoints) when TF is installed, and gcsfs's
# zonal/HNS probe needs credentials before every first access of a bucket.
os.environ.setdefault("EPATH_USE_TF", "false")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from etils import epath  # noqa: E402

PathLike = str | os.PathLike
Path = epath.Path

INCOMPLETE_MARKER = ".anygpt_incomplete"
COMMIT_MARKER = ".anygpt_commit"
REMOTE_SCHEMES = ("gs://",)
AUTH_HINT = (
    "run `gcloud auth application-default login` (or, on a TPU VM, give the VM's service "
    "account access to the bucket)"
)


class StorageError(OSError):
    """A path that cannot be used (no credentials, no bucket, half-written); names the path."""


def configure_clients() -> None:
    """Passes STORAGE_EMULATOR_HOST on to tensorstore; idempotent, called for every gs:// path."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    if "://" not in host:
        host = f"http://{host}"
        os.environ["STORAGE_EMULATOR_HOST"] = host
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host)


def is_remote(p: PathLike) -> bool:
    """Whether `p` names an object store (gs://) rather than a local file."""
    return os.fspath(p).startswith(REMOTE_SCHEMES)


def path(p: PathLike) -> epath.Path:
    """`p` as an epath.Path; local paths are made absolute (the process may change directory)."""
    s = os.fspath(p)
    if is_remote(s):
        _fs()  # the clients' settings and the gcsfs instance epath uses, before its first use
    else:
        s = os.path.abspath(os.path.expanduser(s))
    return epath.Path(s)


def join(base: PathLike, *parts: str) -> str:
    """`base/parts...` as a string, for local paths and URLs alike."""
    return os.fspath(path(base).joinpath(*parts))


def _fs():
    """The gcsfs file system epath uses (one cached instance per process).

    Its directory-listing cache is turned off: other processes (every host of a slice, a
    CLI next to a trainer) write the same bucket, and a cached listing would hide their
    objects, e.g. a checkpoint committed by another host.
    """
    import fsspec

    configure_clients()
    fs = fsspec.filesystem("gcs", finalize_on_close=True)
    fs.dircache.use_listings_cache = False
    return fs


def exists(p: PathLike) -> bool:
    return path(p).exists()


def isdir(p: PathLike) -> bool:
    return path(p).is_dir()


def isfile(p: PathLike) -> bool:
    """Whether `p` is a file (an object on gs://), asked in one request.

    Not `exists() and not is_dir()`: on a MODEL_DIR every host shares, another host's write
    probe (check_access) can appear before the first request and vanish before the second,
    and a directory read as a file.
    """
    q = path(p)
    if is_remote(q):
        return _fs().isfile(os.fspath(q))  # epath's is_file is exists() and not is_dir()
    return q.is_file()


def listdir(p: PathLike) -> list[str]:
    """Names in directory `p`, sorted; [] when it does not exist."""
    q = path(p)
    if not q.is_dir():
        return []
    return sorted(c.name for c in q.iterdir())


def glob(pattern: PathLike) -> list[str]:
    """Paths matching a glob `pattern` (a directory plus a pattern in its last parts), sorted."""
    q = path(pattern)
    parent, rest = q, []
    while any(ch in parent.name for ch in "*?["):
        rest.insert(0, parent.name)
        parent = parent.parent
    if not rest:
        return [os.fspath(q)] if q.exists() else []
    if not parent.is_dir():
        return []
    return sorted(os.fspath(m) for m in parent.glob("/".join(rest)))


def size(p: PathLike) -> int:
    """Size of file `p` in bytes."""
    return int(path(p).stat().length)


def makedirs(p: PathLike) -> None:
    """Creates directory `p` and its parents (a no-op on object stores, which have none)."""
    path(p).mkdir(parents=True, exist_ok=True)


def rmtree(p: PathLike) -> None:
    """Removes `p` and everything under it, if it exists."""
    q = path(p)
    if q.is_dir():
        q.rmtree()
    elif q.exists():
        q.unlink()


def remove(p: PathLike) -> None:
    """Removes file `p` if it exists."""
    q = path(p)
    if q.exists():
        q.unlink()


def open_file(p: PathLike, mode: str = "rb") -> IO:
    """A streaming file object (local file or object); prefer read_*/write_* for whole files."""
    return path(p).open(mode)


def read_bytes(p: PathLike) -> bytes:
    q = path(p)
    if not q.exists():
        raise FileNotFoundError(f"missing file: {q}")
    return q.read_bytes()


def read_text(p: PathLike) -> str:
    return read_bytes(p).decode("utf-8")


def read_range(p: PathLike, start: int, end: int) -> bytes:
    """Bytes [start, end) of file `p`: one ranged GET on an object store."""
    s = os.fspath(path(p))
    if is_remote(s):
        return _fs().cat_file(s, start=start, end=end)
    with open(s, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def write_bytes(p: PathLike, data: bytes) -> None:
    """Writes file `p` whole: readers see the old file or the new one, never a part."""
    q = path(p)
    if is_remote(q):
        q.write_bytes(data)  # an object appears only when its upload completes
        return
    q.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{q.name}.tmp-", dir=os.fspath(q.parent))
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.fspath(q))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _umask() -> int:
    """The process's umask. Reading it means setting it, which briefly changes it for every
    thread, so it is read once per process, on first use."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def write_text(p: PathLike, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def read_json(p: PathLike) -> Any:
    """A JSON value from file `p`, naming the file in any error."""
    try:
        return json.loads(read_text(p))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path(p)}: not valid JSON ({e})") from e


def write_json(p: PathLike, value: Any) -> None:
    """Writes `value` as indented, key-sorted JSON, whole."""
    write_text(p, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Copies one file between any two places (upload, download, or within a store)."""
    s, d = os.fspath(path(src)), os.fspath(path(dst))
    if is_remote(s) or is_remote(d):
        fs = _fs()
        if is_remote(s) and is_remote(d):
            fs.copy(s, d)
        elif is_remote(d):
            fs.put_file(s, d)
        else:
            os.makedirs(os.path.dirname(d), exist_ok=True)
            fs.get_file(s, d)
    else:
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copyfile(s, d)


def walk_files(root: PathLike) -> list[str]:
    """Paths relative to directory `root` (with '/') of every file under it, sorted."""
    s = os.fspath(path(root))
    if is_remote(s):
        base = s[len("gs://"):].rstrip("/") + "/"
        return sorted(f[len(base):] for f in _fs().find(s) if f.startswith(base))
    out = []
    for dirpath, _, files in os.walk(s):
        rel = os.path.relpath(dirpath, s)
        out += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/") for name in files]
    return sorted(out)


def copy_tree(src: PathLike, dst: PathLike) -> None:
    """Copies every file under directory `src` to the same relative path under `dst`."""
    for rel in walk_files(src):
        copy_file(path(src).joinpath(*rel.split("/")), path(dst).joinpath(*rel.split("/")))


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[str]:
    """A local path holding file or directory `p`: `p` itself when local, else a download."""
    q = path(p)
    if not is_remote(q):
        yield os.fspath(q)
        return
    if not q.exists():
        raise FileNotFoundError(f"missing: {q}")
    with tempfile.TemporaryDirectory(prefix="anygpt-download-") as tmp:
        local = os.path.join(tmp, q.name)
        if q.is_dir():
            copy_tree(q, local)
        else:
            copy_file(q, local)
        yield local


# Directory commit protocol -------------------------------------------------------------------


def dir_state(p: PathLike) -> str:
    """'missing', 'empty', 'committed', 'incomplete' (a crashed writer's) or 'foreign'."""
    q = path(p)
    names = set(listdir(q)) if q.exists() else None
    if names is None:
        return "missing"
    if not names:
        return "empty"
    if INCOMPLETE_MARKER in names:
        return "incomplete"
    if COMMIT_MARKER in names:
        return "committed"
    return "foreign"


def require_committed(p: PathLike, what: str = "directory") -> epath.Path:
    """`p` as a Path, or StorageError when it is missing or was never finished.

    A local directory without markers is accepted (it was made by a rename, or predates them);
    on an object store only the commit marker, written last, says a directory is whole.
    """
    q = path(p)
    state = dir_state(q)
    if state == "missing" or (state == "empty" and is_remote(q)):
        raise FileNotFoundError(f"{what} not found: {q}")
    if state == "incomplete" or (state != "committed" and is_remote(q)):
        raise StorageError(
            f"{q}: the {what} was never finished (no {COMMIT_MARKER}; a writer stopped "
            f"part-way); rerun the command that writes it"
        )
    return q


@contextlib.contextmanager
def output_dir(out: PathLike) -> Iterator[epath.Path]:
    """A new directory `out`, committed only when the block succeeds.

    An existing non-empty `out` is refused, so nothing is overwritten, except what a crashed
    run of this protocol left (its incomplete marker), which is cleared and redone. Locally
    the block writes a temp sibling renamed to `out`; on an object store it writes in place
    between the incomplete and the commit markers. On error the partial output is removed.
    """
    q = path(out)
    state = dir_state(q)
    if state in ("committed", "foreign") or (state != "missing" and not q.is_dir()):
        raise FileExistsError(f"output {q} already exists and is not empty; refusing to overwrite")
    check_access(q, write=True)
    marker = json.dumps({"started": time.time(), "host": os.uname().nodename, "pid": os.getpid()})
    if is_remote(q):
        if state == "incomplete":
            rmtree(q)
        write_text(q / INCOMPLETE_MARKER, marker)
        try:
            yield q
            write_text(q / COMMIT_MARKER, marker)
            (q / INCOMPLETE_MARKER).unlink()
        except BaseException:
            with contextlib.suppress(Exception):
                rmtree(q)
            raise
        return
    if state == "incomplete":
        shutil.rmtree(os.fspath(q))
        state = "missing"
    q.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{q.name}.tmp-", dir=os.fspath(q.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
    try:
        yield epath.Path(tmp)
        write_text(os.path.join(tmp, COMMIT_MARKER), marker)
        if state == "empty":
            os.rmdir(os.fspath(q))
        os.rename(tmp, os.fspath(q))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class MirroredDir:
    """A local directory whose files are uploaded to `remote` by sync(), for libraries that
    write only local files (tf.summary, tf.train.Checkpoint, TFRecordWriter, jax.profiler).

    For a local `remote` it is that directory itself and sync() does nothing.
    """

    def __init__(self, remote: PathLike):
        self.remote = path(remote)
        if is_remote(self.remote):
            self._tmp = tempfile.TemporaryDirectory(prefix="anygpt-mirror-")
            self.local = self._tmp.name
        else:
            self._tmp = None
            self.local = os.fspath(self.remote)
            os.makedirs(self.local, exist_ok=True)
        self._synced: dict[str, tuple[int, int]] = {}

    def sync(self) -> None:
        """Uploads every file created or changed since the last sync."""
        if self._tmp is None:
            return
        for dirpath, _, files in os.walk(self.local):
            for name in files:
                local = os.path.join(dirpath, name)
                st = os.stat(local)
                key = (st.st_size, st.st_mtime_ns)
                if self._synced.get(local) != key:
                    rel = os.path.relpath(local, self.local)
                    copy_file(local, self.remote.joinpath(*rel.split(os.sep)))
                    self._synced[local] = key

    def close(self) -> None:
        """Final sync, then drops the local copy."""
        self.sync()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# Access checks --------------------------------------------------------------------------------


def check_access(p: PathLike, write: bool = False) -> None:
    """Raises StorageError naming `p` and the fix when its bucket cannot be reached.

    Local paths pass. For gs:// it lists the bucket (and for `write` creates and deletes a
    probe object), so missing credentials or a missing bucket stop a command before any work.
    """
    s = os.fspath(path(p))
    if not is_remote(s):
        return
    bucket = s[len("gs://"):].split("/", 1)[0]
    if not bucket:
        raise StorageError(f"{s}: no bucket named in the URL (expected gs://BUCKET/PATH)")
    fs = _fs()
    try:
        fs.ls(f"gs://{bucket}", detail=False, refresh=True)
        if write:
            import uuid

            # Unique per call: every host of a slice probes the same MODEL_DIR at once.
            probe = f"{s.rstrip('/')}/.anygpt_write_probe-{uuid.uuid4().hex}"
            fs.pipe_file(probe, b"")
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(probe)
    except FileNotFoundError:
        raise StorageError(
            f"{s}: bucket gs://{bucket} does not exist (create it with `gcloud storage "
            f"buckets create gs://{bucket}`, or fix the path)"
        ) from None
    except OSError as e:
        raise _access_error(s, e) from None
    except Exception as e:  # noqa: BLE001 - credential and HTTP errors have no common base
        raise _access_error(s, e) from None


def _access_error(s: str, e: BaseException) -> StorageError:
    text = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    code = getattr(e, "code", None) or getattr(e, "status", None)
    if code in (401, 403) or "credential" in text.lower() or "401" in text or "403" in text:
        return StorageError(f"{s}: access denied ({text}); {AUTH_HINT}")
    return StorageError(f"{s}: cannot reach the bucket ({text})")
