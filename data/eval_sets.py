"""The paper's evaluation sets, from local copies, -> pre-tokenized shards with their references.

    python -m data.eval_sets coco_karpathy --input dataset_coco.json --media_root COCO \\
        --out shards/coco_test --vocab TOK --tokenizer image=SEED_DIR
    python -m data.eval_sets librispeech --input LibriSpeech/test-clean \\
        --out shards/ls_test_clean --vocab TOK --tokenizer speech=SPEECHTOKENIZER_DIR
    python -m data.eval_sets vctk --input VCTK-Corpus-0.92 --out shards/vctk --vocab TOK \\
        --tokenizer speech=SPEECHTOKENIZER_DIR --max_per_speaker 10
    python -m data.eval_sets musiccaps --input musiccaps-public.csv --media_root CLIPS \\
        --out shards/musiccaps --vocab TOK --tokenizer music=ENCODEC_DIR --allow_missing

Layouts read:
- coco_karpathy: Karpathy's `dataset_coco.json` ({"images": [{"filepath", "filename", "split",
  "cocoid", "sentences": [{"raw"}]}]}); images at MEDIA_ROOT/filepath/filename. --split picks
  the split (test: the 5,000 images of the paper's captioning evaluation).
- librispeech: a LibriSpeech split directory (`*.trans.txt` beside `UTT.flac`).
- vctk: VCTK 0.92 (`txt/SPK/SPK_NNN.txt`, `wav48_silence_trimmed/SPK/SPK_NNN_mic1.flac`) or the
  older release (`wav48/SPK/SPK_NNN.wav`). Each utterance's voice prompt is the speaker's next
  utterance (cyclically), for zero-shot TTS and its speaker similarity.
- musiccaps: `musiccaps-public.csv` (ytid, start_s, end_s, caption, aspect_list,
  is_audioset_eval); clips at MEDIA_ROOT/--audio_pattern (default '{ytid}.wav').

Inputs, media roots and OUT may be local paths or gs:// URLs. The items are written to
OUT/items.jsonl (data/readers.py's pair format, with "meta": the
references, source paths and speakers the metrics need), then `data.build` encodes them into
OUT. A missing annotation file or directory is an error; missing media are an error too,
unless --allow_missing, which drops those items and says how many.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from collections.abc import Callable

from anygpt_jax import storage

from . import build, readers

ITEMS_FILE = "items.jsonl"
VCTK_AUDIO = (
    ("wav48_silence_trimmed", "{utt}_{mic}.flac"),
    ("wav48", "{utt}.wav"),
    ("wav16", "{utt}.wav"),
)


def _need(path: str, what: str) -> None:
    if not storage.exists(path):
        raise readers.InputError(f"{path}: no such {what}")


def coco_karpathy(path: str, media_root: str, split: str = "test") -> list[dict]:
    """Karpathy-split COCO captions: one item per image, all its captions as references."""
    _need(path, "file (Karpathy's dataset_coco.json)")
    _need(media_root, "directory (the COCO images root)")
    try:
        data = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise readers.InputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise readers.InputError(f"{path}: expected an object with an 'images' list")
    items = []
    for n, img in enumerate(data["images"]):
        try:
            if img.get("split") != split:
                continue
            refs = [s["raw"].strip() for s in img["sentences"]]
            image = os.path.join(media_root, img.get("filepath", ""), img["filename"])
            ex_id = str(img.get("cocoid", img.get("imgid", n)))
        except (KeyError, TypeError, AttributeError) as e:
            raise readers.InputError(f"{path}: images[{n}] lacks {e}") from e
        if not refs:
            raise readers.InputError(f"{path}: images[{n}] has no sentences")
        items.append({"id": ex_id, "image": image, "caption": refs[0],
                      "meta": {"references": refs, "source": image}})  # fmt: skip
    if not items:
        raise readers.InputError(f"{path}: no images in split {split!r}")
    return items


def librispeech(path: str) -> list[dict]:
    """A LibriSpeech split: one item per utterance, its transcript as the reference."""
    _need(path, "directory (a LibriSpeech split)")
    return [{"id": it.id, "audio": it.media[0].path, "text": it.text,
             "meta": {"references": [it.text], "source": it.media[0].path,
                      "speaker": it.id.split("-")[0]}}
            for it in readers.read_speech_text(path)]  # fmt: skip


def _vctk_audio(root: str, speaker: str, utt: str, mic: str) -> str | None:
    for folder, pattern in VCTK_AUDIO:
        candidate = os.path.join(root, folder, speaker, pattern.format(utt=utt, mic=mic))
        if storage.isfile(candidate):
            return candidate
    return None


def vctk(
    path: str, mic: str = "mic1", max_per_speaker: int | None = None, allow_missing: bool = False
) -> list[dict]:
    """VCTK utterances with transcripts; each one's voice prompt is another of its speaker."""
    txt_root = os.path.join(path, "txt")
    _need(txt_root, "directory (VCTK's txt/ folder)")
    items, missing = [], []
    for speaker in storage.listdir(txt_root):
        folder = os.path.join(txt_root, speaker)
        if not storage.isdir(folder):
            continue
        utts = []
        for name in storage.listdir(folder):
            if not name.endswith(".txt"):
                continue
            utt = name[: -len(".txt")]
            text = " ".join(storage.read_text(os.path.join(folder, name)).split())
            audio = _vctk_audio(path, speaker, utt, mic)
            if audio is None:
                missing.append(f"{speaker}/{utt}")
            elif text:
                utts.append((utt, text, audio))
        if len(utts) < 2:
            continue  # no other utterance to prompt with
        chosen = utts[:max_per_speaker] if max_per_speaker else utts
        for k, (utt, text, audio) in enumerate(chosen):
            _, prompt_text, prompt_audio = utts[(k + 1) % len(utts)]
            meta = {"references": [text], "source": audio, "speaker": speaker,
                    "prompt_audio": prompt_audio, "prompt_text": prompt_text}  # fmt: skip
            items.append({"id": utt, "audio": audio, "text": text, "meta": meta})
    looked = ", ".join(os.path.join(f, "SPK", p) for f, p in VCTK_AUDIO)
    _report_missing(path, f"VCTK audio files (looked for {looked})", missing, allow_missing)
    if not items:
        raise readers.InputError(f"{path}: no VCTK utterances with audio and transcript")
    return items


def musiccaps(
    path: str,
    media_root: str,
    audio_pattern: str = "{ytid}.wav",
    subset: str = "all",
    allow_missing: bool = False,
) -> list[dict]:
    """MusicCaps captions with their locally downloaded clips; subset all|audioset_eval|balanced."""
    _need(path, "file (musiccaps-public.csv)")
    _need(media_root, "directory (the downloaded MusicCaps clips)")
    column = {"all": None, "audioset_eval": "is_audioset_eval", "balanced": "is_balanced_subset"}
    if subset not in column:
        raise ValueError(f"subset {subset!r}; expected one of {sorted(column)}")
    rows = list(csv.DictReader(io.StringIO(storage.read_text(path), newline="")))
    need = {"ytid", "start_s", "end_s", "caption"} | ({column[subset]} if column[subset] else set())
    if not rows or need - set(rows[0]):
        raise readers.InputError(f"{path}: needs columns {sorted(need)}")
    items, missing = [], []
    for row in rows:
        if column[subset] and row[column[subset]].strip().lower() not in ("true", "1"):
            continue
        audio = os.path.join(media_root, audio_pattern.format(**row))
        if not storage.isfile(audio):
            missing.append(audio)
            continue
        items.append({"id": row["ytid"], "audio": audio, "caption": row["caption"].strip(),
                      "meta": {"references": [row["caption"].strip()], "source": audio,
                               "aspects": row.get("aspect_list", "")}})  # fmt: skip
    _report_missing(path, f"clips ({audio_pattern} under {media_root})", missing, allow_missing)
    if not items:
        raise readers.InputError(f"{path}: no MusicCaps rows with audio in subset {subset!r}")
    return items


def _report_missing(path: str, what: str, missing: list[str], allow: bool) -> None:
    if not missing:
        return
    msg = f"{path}: {len(missing)} missing {what}, e.g. {missing[:3]}"
    if not allow:
        raise readers.InputError(msg + " (pass --allow_missing to drop them)")
    logging.getLogger("data.eval_sets").warning("%s; dropped", msg)


# name -> (shard kind, reader taking the parsed arguments)
SETS: dict[str, tuple[str, Callable[[argparse.Namespace], list[dict]]]] = {
    "coco_karpathy": ("image_text", lambda a: coco_karpathy(a.input, a.media_root, a.split)),
    "librispeech": ("speech_text", lambda a: librispeech(a.input)),
    "vctk": ("speech_text",
             lambda a: vctk(a.input, a.mic, a.max_per_speaker, a.allow_missing)),
    "musiccaps": ("music_text", lambda a: musiccaps(
        a.input, a.media_root, a.audio_pattern, a.subset, a.allow_missing)),
}  # fmt: skip


def write_items(items: list[dict], out_dir: str) -> str:
    """Writes OUT/items.jsonl (local or gs://; media paths as found) whole; returns its path."""
    path = os.path.join(out_dir, ITEMS_FILE)
    storage.write_text(path, "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    return path


def prepare(name: str, args: argparse.Namespace) -> dict:
    """Reads eval set `name`, writes its items and builds the shards; returns the summary."""
    if name not in SETS:
        raise ValueError(f"eval set {name!r}; expected one of {sorted(SETS)}")
    if name in ("coco_karpathy", "musiccaps") and not args.media_root:
        raise ValueError(f"{name} needs --media_root (where its media files are)")
    kind, read = SETS[name]
    build.check_paths([p for p in (args.input, args.media_root) if p], args.out)
    items = read(args)
    if args.max_examples:
        items = items[: args.max_examples]
    path = write_items(items, args.out)
    return build.build(kind, [path], args.out, args.vocab, build._tokenizer_args(args.tokenizer),
                       args.examples_per_shard, args.workers, args.batch_size,
                       not args.no_progress)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.eval_sets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=sorted(SETS))
    p.add_argument("--input", required=True, help="annotation file or corpus directory")
    p.add_argument("--media_root", help="images (coco_karpathy) or clips (musiccaps) directory")
    p.add_argument(
        "--out",
        required=True,
        help="shard directory, local or gs:// (created; a crashed build is resumed)",
    )
    p.add_argument("--vocab", required=True, help="tokenizer directory of the merged vocabulary")
    p.add_argument("--tokenizer", action="append", default=[], help="MODALITY=SPEC (data.build)")
    p.add_argument("--split", default="test", help="coco_karpathy split")
    p.add_argument("--mic", default="mic1", help="vctk 0.92 microphone")
    p.add_argument("--max_per_speaker", type=int, default=None, help="vctk utterances/speaker")
    p.add_argument("--audio_pattern", default="{ytid}.wav", help="musiccaps clip file name")
    p.add_argument("--subset", default="all", help="musiccaps: all|audioset_eval|balanced")
    p.add_argument("--max_examples", type=int, default=None, help="keep the first N items")
    p.add_argument("--allow_missing", action="store_true", help="drop items with missing media")
    p.add_argument("--examples-per-shard", dest="examples_per_shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--no-progress", dest="no_progress", action="store_true")
    args = p.parse_args(argv)
    # Our own progress at INFO; other libraries only past their warnings (fsspec announces
    # its read caches at INFO on every gs:// file).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("data").setLevel(logging.INFO)
    try:
        summary = prepare(args.name, args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0 if summary["examples"] else 1


if __name__ == "__main__":
    sys.exit(main())
