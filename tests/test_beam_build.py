"""data.build on Apache Beam: the local builder's bytes from the multi-process DirectRunner and
the CLI, dead letters, a retried bundle, resume, refusals, and gs:// in and out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from synthetic_task import noisy_lines, user_env

from anygpt_jax import storage
from anygpt_jax.data import shards as shards_lib
from data import beam_build, build, demo, readers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_SHARD = 7


@pytest.fixture(scope="module")
def image_inputs(tmp_path_factory) -> list[str]:
    """The demo's raw images as three inputs: two halves of its JSONL, and a third whose items
    are a corrupt PNG and a missing file (the dead letters)."""
    raw = tmp_path_factory.mktemp("raw")
    images = demo.make_raw(str(raw), num_images=30, num_music=1, num_dialogues=1,
                           render=False)["image_text"]
    lines = open(images).read().splitlines()
    first, second = raw / "part-0.jsonl", raw / "part-1.jsonl"
    first.write_text("\n".join(lines[:17]) + "\n")
    second.write_text("\n".join(lines[17:]) + "\n")
    (raw / "media" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    bad = raw / "part-2.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "corrupt", "image": "media/corrupt.png", "caption": "A broken file."},
        {"id": "absent", "image": "media/absent.png", "caption": "No file."},
        json.loads(lines[0]) | {"id": "again0"},
    ]))
    return [str(first), str(second), str(bad)]


def _local(inputs, out, vocab_dir, kind="image_text", tokenizers=None):
    return build.build(kind, inputs, str(out), vocab_dir, tokenizers or {"image": "demo"},
                       examples_per_shard=PER_SHARD, workers=1, progress=False)


def _files(directory) -> dict[str, bytes]:
    return {name: storage.read_bytes(storage.join(str(directory), name))
            for name in sorted(storage.listdir(str(directory)))}


def assert_same_directory(beam_dir, local_dir) -> None:
    """Byte for byte; on a difference, the first differing record, in shard order then record
    order within a shard (the order both builders write)."""
    got, want = _files(beam_dir), _files(local_dir)
    assert sorted(got) == sorted(want)
    for name in want:
        if got[name] == want[name]:
            continue
        if name.endswith(".tfrecord"):
            a = shards_lib.read_shard(storage.join(str(beam_dir), name))
            b = shards_lib.read_shard(storage.join(str(local_dir), name))
            assert [e.id for e in a] == [e.id for e in b], name
            for x, y in zip(a, b, strict=True):
                assert shards_lib.serialize(x) == shards_lib.serialize(y), (name, x.id)
        assert got[name] == want[name], name


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "data.build", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env=env or user_env(dict(os.environ, PYTHONPATH=REPO)))


def test_the_cli_on_two_direct_runner_workers_writes_the_local_builders_bytes(
        image_inputs, anygpt_tokenizer_dir, tmp_path):
    local = _local(image_inputs, tmp_path / "local", anygpt_tokenizer_dir)
    run = _cli("--kind", "image_text", *[a for p in image_inputs for a in ("--input", p)],
               "--vocab", anygpt_tokenizer_dir, "--tokenizer", "image=demo",
               "--examples-per-shard", str(PER_SHARD), "--no-progress",
               "--out", str(tmp_path / "beam"), "--runner", "DirectRunner", "--workers", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert noisy_lines(run.stdout + run.stderr) == [], run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary | {"out": None} == local | {"out": None}
    assert (summary["inputs"], summary["examples"], summary["skipped"], summary["shards"]) == (
        33, 31, 2, 5)
    assert_same_directory(tmp_path / "beam", tmp_path / "local")
    # The dead letters: each unreadable item once, with its reason, in input order.
    dead = beam_build.read_dead_letters(str(tmp_path / "beam"))
    assert [d["id"] for d in dead] == ["corrupt", "absent"]
    assert "corrupt.png" in dead[0]["reason"] and "absent.png" in dead[1]["reason"]


def test_a_bundle_that_fails_once_is_retried_without_duplicate_or_gap(
        image_inputs, anygpt_tokenizer_dir, tmp_path, monkeypatch):
    """The bundle-based DirectRunner retries a failed bundle, as Dataflow does. Shard 1 fails
    at the worst moment: its bytes written, its sidecar not."""
    _local(image_inputs, tmp_path / "local", anygpt_tokenizer_dir)
    write_shard, failed = shards_lib.write_shard, []

    def fails_once(path, examples, vocab):
        entry = write_shard(path, examples, vocab)
        if path.endswith(shards_lib.shard_name(1, 5)) and not failed:
            failed.append(path)
            raise OSError(f"{path}: injected failure after the shard's bytes")
        return entry

    monkeypatch.setattr(shards_lib, "write_shard", fails_once)
    options = beam_build.runner_options("BundleBasedDirectRunner", [], workers=1)
    summary = beam_build.run("image_text", image_inputs, str(tmp_path / "beam"),
                             anygpt_tokenizer_dir, {"image": "demo"}, options, PER_SHARD)
    assert failed and summary["examples"] == 31
    assert_same_directory(tmp_path / "beam", tmp_path / "local")


def test_a_rerun_after_a_crash_keeps_the_finished_shards(image_inputs, anygpt_tokenizer_dir,
                                                          tmp_path):
    out = tmp_path / "beam"
    options = beam_build.runner_options("BundleBasedDirectRunner", [], workers=1)
    args = ("image_text", image_inputs, str(out), anygpt_tokenizer_dir, {"image": "demo"},
            options, PER_SHARD)
    beam_build.run(*args)
    before = _files(out)
    with pytest.raises(FileExistsError, match="finished shard directory"):
        beam_build.run(*args)
    # A crash: no manifest yet, one shard's sidecar lost with it.
    os.remove(out / shards_lib.MANIFEST)
    os.remove(out / (shards_lib.shard_name(3, 5) + ".json"))
    again = beam_build.run(*args)
    assert again["resumed_shards"] == 4
    assert _files(out) == before


def test_refusals_name_the_fault_and_write_nothing(image_inputs, anygpt_tokenizer_dir,
                                                   tmp_path):
    options = beam_build.runner_options("BundleBasedDirectRunner", [], workers=1)
    # An id of one input repeats one of another: the local builder's refusal, before any shard.
    repeated = tmp_path / "repeat.jsonl"
    repeated.write_text(open(image_inputs[0]).readline().replace("media/", os.path.dirname(
        image_inputs[0]) + "/media/"))
    out = tmp_path / "repeat"
    with pytest.raises(readers.InputError, match="id 'digit0' repeats one from"):
        beam_build.run("image_text", [image_inputs[0], str(repeated)], str(out),
                       anygpt_tokenizer_dir, {"image": "demo"}, options, PER_SHARD)
    assert not [f for f in os.listdir(out) if f.endswith((".tfrecord", ".json"))]
    with pytest.raises(ValueError, match=r"no --tokenizer given for \['image'\]"):
        beam_build.run("image_text", image_inputs[:1], str(tmp_path / "untokenized"),
                       anygpt_tokenizer_dir, {}, options, PER_SHARD)
    with pytest.raises(readers.InputError, match="nowhere.jsonl: no such file"):
        beam_build.run("image_text", [str(tmp_path / "nowhere.jsonl")], str(tmp_path / "x"),
                       anygpt_tokenizer_dir, {"image": "demo"}, options, PER_SHARD)
    # The CLI: one clear line and exit status 1; pipeline options without --runner refused.
    run = _cli("--kind", "image_text", "--input", str(repeated), "--input", image_inputs[0],
               "--vocab", anygpt_tokenizer_dir, "--tokenizer", "image=demo", "--no-progress",
               "--out", str(tmp_path / "cli"), "--runner", "DirectRunner")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "repeats one from" in run.stderr
    run = _cli("--kind", "image_text", "--input", image_inputs[0], "--vocab", anygpt_tokenizer_dir,
               "--out", str(tmp_path / "y"), "--direct_num_workers=2")
    assert run.returncode == 2 and "need --runner" in run.stderr


def test_gs_inputs_and_output(gs_dir, image_inputs, anygpt_tokenizer_dir, tmp_path):
    """Inputs, media and shards on a GCS API emulator, through the project's storage layer."""
    remote_raw = storage.join(gs_dir, "raw")
    local_raw = os.path.dirname(image_inputs[0])
    for root, _, names in os.walk(local_raw):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), local_raw)
            storage.copy_file(os.path.join(root, name), storage.join(remote_raw, rel))
    inputs = [storage.join(remote_raw, os.path.basename(p)) for p in image_inputs[:2]]
    _local(image_inputs[:2], tmp_path / "local", anygpt_tokenizer_dir)
    options = beam_build.runner_options("BundleBasedDirectRunner", [], workers=1)
    out = storage.join(gs_dir, "shards")
    summary = beam_build.run("image_text", inputs, out, anygpt_tokenizer_dir,
                             {"image": "demo"}, options, PER_SHARD)
    assert summary["examples"] == 30
    assert_same_directory(out, tmp_path / "local")


# ~2 min: renders the demo's speech and music, and each of two worker processes compiles the
# demo codecs.
@pytest.mark.slow
def test_every_reader_of_the_demo_builds_the_same_on_two_workers(anygpt_tokenizer_dir,
                                                                  tmp_path):
    """speech_text, music_text and dialogue (which quotes all three media) from the demo's raw
    material: the DirectRunner's two worker processes write the local builder's bytes."""
    inputs = demo.make_raw(str(tmp_path / "raw"), num_images=20, num_music=3,
                           num_dialogues=12)
    tokenizers = {"image": "demo", "speech": "demo", "music": "demo"}
    options = beam_build.runner_options("DirectRunner", [], workers=2)
    for kind in ("speech_text", "music_text", "dialogue"):
        local = _local([inputs[kind]], tmp_path / "local" / kind, anygpt_tokenizer_dir, kind,
                       tokenizers)
        summary = beam_build.run(kind, [inputs[kind]], str(tmp_path / "beam" / kind),
                                 anygpt_tokenizer_dir, tokenizers, options, PER_SHARD)
        assert summary | {"out": None} == local | {"out": None}, kind
        assert summary["examples"] > 0 and summary["skipped"] == 0, summary
        assert_same_directory(tmp_path / "beam" / kind, tmp_path / "local" / kind)


def _readme_section() -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    start = text.index("## Pre-tokenizing a corpus")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_local_beam_command_runs_as_written(anygpt_tokenizer_dir, tmp_path):
    """Against what command 1 leaves in runs/demo_corpus: its raw images and vocabulary."""
    import shutil

    (command,) = [c for b in re.findall(r"```bash\n(.*?)```", _readme_section(), re.S)
                  for c in b.splitlines() if c.strip()]
    demo.make_raw(str(tmp_path / "runs" / "demo_corpus" / "raw"), num_images=24, num_music=1,
                  num_dialogues=1, render=False)
    shutil.copytree(anygpt_tokenizer_dir, tmp_path / "runs" / "demo_corpus" / "vocab")
    env = user_env(dict(os.environ, PYTHONPATH=REPO))
    run = subprocess.run(["bash", "-ec", command], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["examples"] == 24
    shards_lib.read_manifest(str(tmp_path / "runs" / "images_on_beam"))


def test_the_readme_cluster_commands_use_only_known_flags():
    """Dataflow, Flink, Spark and portable-runner commands: each flag is data.build's or a
    pipeline option of the installed Beam (a cluster is not at hand to run them)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    blocks = re.findall(r"```text\n(.*?)```", _readme_section(), re.S)
    commands = [c.replace("\\\n", " ") for b in blocks for c in re.split(r"\n(?=python )", b)]
    assert len(commands) == 4
    full = commands[0].split()[3:]
    runners = set()
    for command in commands:
        words = command.split()
        assert words[:3] == ["python", "-m", "anygpt_jax.recipes.build"], command
        argv = [w for x in words[3:] for w in (full[:full.index("--runner")] if x == "..."
                                               else [x])]
        args, beam_args = build.parse_args(argv)
        options = PipelineOptions([f"--runner={args.runner}", *beam_args])
        known = options.get_all_options()
        given = options.get_all_options(retain_unknown_options=True)
        assert set(given) == set(known), (command, set(given) - set(known))
        runners.add(args.runner)
    assert runners == {"DataflowRunner", "PortableRunner", "FlinkRunner", "SparkRunner"}
