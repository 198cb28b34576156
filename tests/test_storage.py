"""The storage layer against the local file system and a real GCS API emulator."""

import json
import os

import pytest

from anygpt_jax import storage


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gs_dir")


def test_files_round_trip(root):
    f = storage.join(root, "a", "b.json")
    storage.write_json(f, {"x": 1})
    assert storage.read_json(f) == {"x": 1}
    assert storage.isfile(f) and not storage.isdir(f)
    assert storage.isdir(storage.join(root, "a"))
    assert storage.listdir(storage.join(root, "a")) == ["b.json"]
    assert storage.size(f) == len(json.dumps({"x": 1}, indent=2)) + 1
    storage.write_bytes(storage.join(root, "r.bin"), bytes(range(100)))
    assert storage.read_range(storage.join(root, "r.bin"), 10, 20) == bytes(range(10, 20))
    assert storage.glob(storage.join(root, "a", "*.json")) == [f]
    with pytest.raises(FileNotFoundError, match="missing file"):
        storage.read_bytes(storage.join(root, "nope"))
    storage.rmtree(storage.join(root, "a"))
    assert not storage.exists(f)


def test_output_dir_commits_or_leaves_nothing(root):
    out = storage.join(root, "out")
    with storage.output_dir(out) as d:
        (d / "x.txt").write_text("1")
    assert storage.dir_state(out) == "committed"
    storage.require_committed(out)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        with storage.output_dir(out):
            pass
    failed = storage.join(root, "failed")
    with pytest.raises(RuntimeError):
        with storage.output_dir(failed) as d:
            (d / "x.txt").write_text("1")
            raise RuntimeError("boom")
    assert not storage.exists(storage.join(failed, "x.txt"))


def test_crashed_writer_is_redone_not_taken(root):
    """A directory a killed writer left (incomplete marker) is refused by readers and cleared
    by the next writer; a directory that is not ours is never cleared."""
    out = storage.join(root, "crashed")
    storage.write_text(storage.join(out, storage.INCOMPLETE_MARKER), "{}")
    storage.write_text(storage.join(out, "half.bin"), "x")
    with pytest.raises(storage.StorageError, match="never finished"):
        storage.require_committed(out)
    with storage.output_dir(out) as d:
        (d / "whole.bin").write_text("y")
    assert sorted(storage.listdir(out)) == [storage.COMMIT_MARKER, "whole.bin"]
    foreign = storage.join(root, "theirs")
    storage.write_text(storage.join(foreign, "keep.txt"), "mine")
    with pytest.raises(FileExistsError):
        with storage.output_dir(foreign):
            pass
    assert storage.read_text(storage.join(foreign, "keep.txt")) == "mine"


def test_remote_directory_without_commit_marker_is_refused(gs_dir):
    storage.write_text(storage.join(gs_dir, "model_config.json"), "{}")
    with pytest.raises(storage.StorageError, match="never finished"):
        storage.require_committed(gs_dir, "model directory")


def test_mirrored_dir_uploads_changes(gs_dir, tmp_path):
    m = storage.MirroredDir(storage.join(gs_dir, "tb"))
    with open(os.path.join(m.local, "events"), "wb") as f:
        f.write(b"one")
    m.sync()
    assert storage.read_bytes(storage.join(gs_dir, "tb", "events")) == b"one"
    with open(os.path.join(m.local, "events"), "ab") as f:
        f.write(b"two")
    m.close()
    assert storage.read_bytes(storage.join(gs_dir, "tb", "events")) == b"onetwo"
    local = storage.MirroredDir(str(tmp_path / "tb"))
    assert local.local == str(tmp_path / "tb")


def test_local_copy_downloads_a_tree(gs_dir):
    storage.write_text(storage.join(gs_dir, "d", "a.txt"), "a")
    storage.write_text(storage.join(gs_dir, "d", "sub", "b.txt"), "b")
    with storage.local_copy(storage.join(gs_dir, "d")) as local:
        with open(os.path.join(local, "sub", "b.txt")) as f:
            assert f.read() == "b"


def test_missing_bucket_names_path_and_fix(gcs):
    with pytest.raises(storage.StorageError, match="gs://no-such-bucket.*does not exist.*create"):
        storage.check_access("gs://no-such-bucket/x", write=True)


def test_local_outputs_get_the_umask_modes_not_the_temp_files(tmp_path):
    """Files and committed directories are created as open() and mkdir() would: mode 0666 /
    0777 less the umask, not mkstemp's 0600 or mkdtemp's 0700."""
    old = os.umask(0o022)
    storage._UMASK = None  # read again under this umask
    try:
        f = tmp_path / "a.json"
        storage.write_json(str(f), {})
        with storage.output_dir(str(tmp_path / "out")) as d:
            storage.write_text(d / "x", "1")
    finally:
        os.umask(old)
        storage._UMASK = None
    assert f.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "x").stat().st_mode & 0o777 == 0o644


def test_a_directory_whose_objects_come_and_go_is_never_a_file(gs_dir):
    """Every host's write probe appears and vanishes in the shared MODEL_DIR while the others
    ask whether it is a file; the answer must never be yes (it once was, and a host quit)."""
    import threading

    model_dir = storage.join(gs_dir, "shared")
    stop = threading.Event()

    def probe_forever():
        while not stop.is_set():
            storage.check_access(model_dir, write=True)

    prober = threading.Thread(target=probe_forever)
    prober.start()
    try:
        answers = {storage.isfile(model_dir) for _ in range(150)}
    finally:
        stop.set()
        prober.join()
    assert answers == {False}
    storage.write_bytes(storage.join(gs_dir, "a_file"), b"x")
    assert storage.isfile(storage.join(gs_dir, "a_file"))
    assert not storage.isfile(storage.join(gs_dir, "absent"))
