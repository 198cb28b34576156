"""The offline demo corpus: real material, built by the same builder in under a minute on 2 cores.

    python -m data.demo --out demo_corpus [--vocab TOKENIZER_DIR] [--raw-only] [--no-progress]

--out may be a local directory or a gs:// URL (the media are rendered locally, then uploaded).
Without --vocab the corpus gets its own vocabulary in out/vocab (data/demo_vocab.py). A
finished build is kept: running the command again rebuilds only what is missing.

- image_text: scikit-learn's handwritten digits (8x8, 17 gray levels) with generated captions;
- speech_text: the Zen of Python's sentences spoken by espeak-ng in several voices and speeds;
- music_text: 5 s clips composed here (scales, chords, arpeggios, rhythms) as MIDI, rendered
  by fluidsynth with the General MIDI FluidR3 sound font, captioned from their parameters;
- dialogue: a few hundred chats interleaving the three.

Tokenizers are the builder's `demo` ones (data/media.py): speech and music codecs are randomly
initialized small SEANets unless `--tokenizer speech=DIR` / `music=DIR` give converted weights;
images use the lossless `digits_pixel_pairs` code, not SEED. Tasks reading these shards must
accept that: `tasks.register(..., tokenizers=DEMO_TOKENIZERS)`.

Speed: the audio renders run concurrently; all four kinds are built in this process, so each
codec is made and compiled once (data.build.get_encoder) and the dialogues reuse the codes of
the clips they quote (data.media's code cache). The output does not depend on any of that.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import importlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np

from anygpt_jax import storage
from anygpt_jax.data import shards as shards_lib

from . import build
from .demo_vocab import build_demo_vocab

SOUND_FONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
DEMO_TOKENIZERS = {"image": "digits_pixel_pairs"}
NUMBERS = "zero one two three four five six seven eight nine".split()
VOICES = ("en-us", "en-gb+f3", "en-us+m3")
INSTRUMENTS = {0: "piano", 24: "nylon guitar", 40: "violin", 73: "flute", 19: "church organ",
               56: "trumpet", 11: "vibraphone", 32: "acoustic bass"}  # fmt: skip
# The renders mostly wait on disk and process start-up, so more of them than cores pays off.
RENDER_WORKERS = 6
KEYS = {"C": 60, "D": 62, "E": 64, "F": 65, "G": 67, "A": 57}
RAW_DONE = "raw_done.json"  # in out/raw, written once the raw corpus is whole: kind -> file


def zen_sentences() -> list[str]:
    """The Zen of Python's lines, decoded from the standard library's rot13 copy."""
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the poem
        this = importlib.import_module("this")
    text = "".join(this.d.get(c, c) for c in this.s)
    return [s.strip() for s in text.splitlines()[2:] if s.strip()]


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    while n > 127:
        n >>= 7
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


def midi_bytes(notes: list[tuple[float, float, int, int]], program: int, bpm: int) -> bytes:
    """A format-0 MIDI file of (start beat, beats, pitch, velocity) notes on one instrument."""
    tpb = 480
    events = [
        (0, bytes([0xFF, 0x51, 3]) + struct.pack(">I", 60_000_000 // bpm)[1:]),
        (0, bytes([0xC0, program])),
    ]
    for start, dur, pitch, vel in notes:
        events.append((int(start * tpb), bytes([0x90, pitch, vel])))
        events.append((int((start + dur) * tpb), bytes([0x80, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1][0] == 0x90))
    track, now = b"", 0
    for t, ev in events:
        track += _vlq(t - now) + ev
        now = t
    track += b"\x00\xff\x2f\x00"
    return (
        b"MThd"
        + struct.pack(">IHHH", 6, 0, 1, tpb)
        + b"MTrk"
        + struct.pack(">I", len(track))
        + track
    )


def compose(k: int) -> tuple[list, int, int, str]:
    """Clip k: a pattern, key, mode, instrument and tempo -> notes and a caption."""
    rng = np.random.default_rng(k)
    prog, inst = list(INSTRUMENTS.items())[k % len(INSTRUMENTS)]
    key, root = list(KEYS.items())[k // len(INSTRUMENTS) % len(KEYS)]
    minor = bool(k % 2)
    bpm = int(rng.choice([72, 96, 120, 144]))
    scale = [0, 2, 3, 5, 7, 8, 10, 12] if minor else [0, 2, 4, 5, 7, 9, 11, 12]
    pattern = ["scale", "chords", "arpeggio", "rhythm"][k % 4]
    beats = 5 * bpm / 60
    notes = []
    if pattern == "scale":
        seq = scale + scale[::-1][1:]
        notes = [(i * 0.5, 0.5, root + seq[i % len(seq)], 90) for i in range(int(beats * 2))]
    elif pattern == "chords":
        for i, deg in enumerate([0, 3, 4, 0] * 3):
            base = root + scale[deg]
            third = scale[(deg + 2) % 7] + (12 if deg + 2 >= 7 else 0)
            fifth = scale[(deg + 4) % 7] + (12 if deg + 4 >= 7 else 0)
            notes += [(i * 2.0, 2.0, p, 80) for p in (base, root + third, root + fifth)]
    elif pattern == "arpeggio":
        arp = [0, 4, 7, 12, 7, 4] if not minor else [0, 3, 7, 12, 7, 3]
        notes = [(i * 0.25, 0.25, root + arp[i % 6], 85) for i in range(int(beats * 4))]
    else:
        notes = [
            (i * 0.5, 0.3, root + (0 if i % 4 else 12), 110 if i % 4 == 0 else 70)
            for i in range(int(beats * 2))
        ]
    speed = {72: "slow", 96: "moderate", 120: "lively", 144: "fast"}[bpm]
    what = {
        "scale": "a scale going up and down",
        "chords": "a I-IV-V-I chord progression",
        "arpeggio": "a rippling arpeggio",
        "rhythm": "a steady rhythmic octave pattern",
    }
    caption = (
        f"A {speed} solo {inst} playing {what[pattern]} in {key} "
        f"{'minor' if minor else 'major'} at {bpm} beats per minute."
    )
    return notes, prog, bpm, caption


def check_tools() -> None:
    """Raises OSError naming the missing renderer or sound font (Debian packages to install)."""
    missing = [t for t in ("espeak-ng", "fluidsynth") if shutil.which(t) is None]  # local: PATH
    font = os.path.isfile(SOUND_FONT)  # local: the system's sound font, read by fluidsynth
    if missing or not font:
        raise OSError(
            f"the demo corpus needs espeak-ng, fluidsynth and {SOUND_FONT}; missing: "
            f"{', '.join(missing + ([] if font else [SOUND_FONT]))} "
            "(apt-get install espeak-ng fluidsynth fluid-soundfont-gm)"
        )


def render_all(commands: list[list[str]], workers: int = RENDER_WORKERS) -> None:
    """Runs independent render commands concurrently; raises on the first failure, in order."""
    # Threads suffice: each waits on its own subprocess. Every command writes its own file,
    # so the output does not depend on the order they finish in.
    with cf.ThreadPoolExecutor(workers) as pool:
        futures = [
            pool.submit(subprocess.run, c, check=True, capture_output=True) for c in commands
        ]
        for f in futures:
            f.result()


def _jsonl(raw, name, rows):
    storage.write_text(
        os.path.join(raw, name), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    return name


def make_raw(
    raw: str,
    num_images: int = 300,
    num_music: int = 48,
    num_dialogues: int = 300,
    render: bool = True,
) -> dict[str, str]:
    """Writes the raw corpus (PNGs, WAVs, JSONL) to `raw`, local or gs://; returns kind -> input
    file. render False skips the audio renders (the JSONL text, for the vocabulary, is the same).
    """
    mirror = storage.MirroredDir(raw)  # the renderers write local files only
    names = _write_raw(mirror.local, num_images, num_music, num_dialogues, render)
    mirror.close()
    return {kind: os.path.join(raw, name) for kind, name in names.items()}


def _write_raw(
    raw: str,
    num_images: int = 300,
    num_music: int = 48,
    num_dialogues: int = 300,
    render: bool = True,
) -> dict[str, str]:
    """make_raw into local directory `raw`; returns kind -> file name in `raw`."""
    from PIL import Image
    from sklearn.datasets import load_digits

    storage.makedirs(os.path.join(raw, "media"))
    digits = load_digits()
    images = []
    for i in range(num_images):
        img, label = digits.images[i], int(digits.target[i])
        name = f"media/digit{i:04d}.png"
        Image.fromarray(np.rint(img * 255 / 16).astype(np.uint8)).save(os.path.join(raw, name))
        ink = "bold" if img.sum() > 320 else "thin"
        images.append(
            {
                "id": f"digit{i}",
                "image": name,
                "label": label,
                "caption": f"A handwritten digit {NUMBERS[label]} in {ink} strokes.",
            }
        )
    speech, renders = [], []
    for i, (text, voice) in enumerate((t, v) for t in zen_sentences() for v in VOICES):
        name = f"media/zen{i:03d}.wav"
        rate = str(140 + 15 * (i % 3))
        renders.append(["espeak-ng", "-v", voice, "-s", rate, "-w", os.path.join(raw, name), text])
        speech.append({"id": f"zen{i}", "audio": name, "text": text})
    music = []
    for k in range(num_music):
        notes, prog, bpm, caption = compose(k)
        mid, wav = os.path.join(raw, f"media/clip{k:03d}.mid"), f"media/clip{k:03d}.wav"
        storage.write_bytes(mid, midi_bytes(notes, prog, bpm))
        # Dynamic sample loading reads only the instrument used from the 140 MB sound font
        # (same samples out, a third less time per clip).
        renders.append(
            ["fluidsynth", "-ni", "-o", "synth.dynamic-sample-loading=1", "-g", "0.8", "-r",
             "32000", "-F", os.path.join(raw, wav), SOUND_FONT, mid]
        )  # fmt: skip
        music.append({"id": f"clip{k}", "audio": wav, "caption": caption})
    if render:
        check_tools()
        render_all(renders)
    rng = np.random.default_rng(0)
    dialogues = []
    for d in range(num_dialogues):
        turns = []
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(4))
            if c == 0:
                im = images[rng.integers(len(images))]
                turns += [
                    {"role": "human", "content": ["Which digit is this? ", {"image": im["image"]}]},
                    {"role": "assistant", "content": [f"It is a {NUMBERS[im['label']]}."]},
                ]
            elif c == 1:
                sp = speech[rng.integers(len(speech))]
                turns += [
                    {"role": "human", "content": [f"Please say: {sp['text']}"]},
                    {"role": "assistant", "content": [{"speech": sp["audio"]}]},
                ]
            elif c == 2:
                sp = speech[rng.integers(len(speech))]
                turns += [
                    {"role": "human", "content": [{"speech": sp["audio"]}]},
                    {"role": "assistant", "content": [f"You said: {sp['text']}"]},
                ]
            else:
                mu = music[rng.integers(len(music))]
                turns += [
                    {"role": "human", "content": [f"Play this for me: {mu['caption']}"]},
                    {"role": "assistant", "content": ["Here it is. ", {"music": mu["audio"]}]},
                ]
        dialogues.append({"id": f"chat{d}", "turns": turns})
    return {
        "image_text": _jsonl(raw, "images.jsonl", images),
        "speech_text": _jsonl(raw, "speech.jsonl", speech),
        "music_text": _jsonl(raw, "music.jsonl", music),
        "dialogue": _jsonl(raw, "dialogues.jsonl", dialogues),
    }


def build_demo(
    out: str,
    vocab_dir: str | None = None,
    tokenizers: dict[str, str] | None = None,
    progress: bool = True,
) -> dict:
    """Raw corpus under out/raw, shards under out/<kind> (`out` local or gs://); returns the
    builder summaries. vocab_dir None trains the demo's own vocabulary into out/vocab."""
    storage.check_access(out, write=True)
    raw = os.path.join(out, "raw")
    done = os.path.join(raw, RAW_DONE)
    with contextlib.ExitStack() as stack:
        if storage.exists(done):  # media are made once; the builder resumes by itself
            names = storage.read_json(done)
            # (older markers held full paths: their file names are what counts)
            inputs = {k: os.path.join(raw, os.path.basename(v)) for k, v in names.items()}
        else:
            mirror = storage.MirroredDir(raw)  # the renderers write local files only
            names = _write_raw(mirror.local)
            mirror.sync()
            storage.write_json(done, names)
            stack.callback(mirror.close)
            # Built from the local files just made, not from downloads of their uploads.
            inputs = {k: os.path.join(mirror.local, n) for k, n in names.items()}
        inputs = {k: inputs[k] for k in shards_lib.kinds() if k in inputs}  # build order
        if vocab_dir is None:
            vocab_dir = os.path.join(out, "vocab")
            build_demo_vocab(vocab_dir, inputs.values())
        toks = {"image": "demo", "speech": "demo", "music": "demo"} | dict(tokenizers or {})
        summaries = {}
        for kind, path in inputs.items():
            shard_dir = os.path.join(out, kind)
            if storage.exists(os.path.join(shard_dir, shards_lib.MANIFEST)):
                summaries[kind] = _finished_summary(shard_dir)  # kept, not rebuilt
                continue
            summaries[kind] = build.build(
                kind,
                [path],
                shard_dir,
                vocab_dir,
                toks,
                examples_per_shard=200,
                workers=1,
                progress=progress,
            )
        return summaries


def _finished_summary(shard_dir: str) -> dict:
    """The builder's summary of a finished shard directory, from its manifest."""
    manifest = shards_lib.read_manifest(shard_dir)
    return build.summary_of(shard_dir, manifest) | {"resumed_shards": len(manifest["shards"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory, local or gs://")
    p.add_argument(
        "--vocab", help="tokenizer directory of the merged vocabulary (default: train out/vocab)"
    )
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        help="MODALITY=DIR of converted weights instead of the random demo codec",
    )
    p.add_argument("--raw-only", action="store_true", help="write the raw corpus only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        if args.raw_only:
            storage.check_access(args.out, write=True)
            print(json.dumps(make_raw(os.path.join(args.out, "raw")), indent=2))
            return 0
        summary = build_demo(
            args.out, args.vocab, build._tokenizer_args(args.tokenizer), not args.no_progress
        )
    except (ValueError, OSError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {k: {x: v[x] for x in ("examples", "skipped", "tokens")} for k, v in summary.items()},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
