"""`python -m anygpt_jax.infer --ckpt DIR [--mode base|chat] [--requests in.jsonl --out DIR]`.

Any-to-any inference with an AnyGPT model directory. Without --requests it reads one request
per line from stdin (a bad request prints an error and the session goes on); with --requests
it runs a JSONL file into OUT/results.jsonl plus media files, generating the requests that
share an output modality in one batched call.

  base: AnyGPT's pre-training templates, one direction per request:
        text|image|a red bus      image|text|cat.png     text|speech|Hello there[|voice.wav]
        speech|text|hello.wav     text|music|calm piano  music|text|clip.wav
  chat: multi-turn dialogue with the history kept; [image: PATH], [speech: PATH] and
        [music: PATH] put media in a message; /to MODALITY, /clear, /quit.

Every path (--ckpt, --requests, --out, media, tokenizer directories) may be local or gs://.

JSONL lines (relative paths resolve against the file's directory):
  base: {"id": "a", "request": "text|image|a red bus"}  or
        {"id": "b", "from": "text", "to": "speech", "input": "Hi", "voice": "v.wav"}
        (optional "instruction" replaces the one drawn from the pool)
  chat: {"id": "c", "messages": ["Hi [image: a.png]", {"content": "A song?", "to": "music"}]}

Media in needs the tokenizer directories (--image_tokenizer, --speech_tokenizer,
--music_tokenizer; `demo` = the demo corpus's random speech/music codecs). Media out: images
render to PNG with --unclip_pipeline DIR (diffusers Stable unCLIP), music to 32 kHz WAV, speech
to 16 kHz WAV with --soundstorm DIR (acoustic completion; a text|speech voice prompt gives the
voice). What cannot be rendered is written as codes (NAME.MODALITY.json) with a note why.

Exit status 1 when the set-up is unusable or any request failed. results.jsonl, one line per
request in input order: {"line", "mode", "id", "error"} and for
base {"request", "instruction", "text", "media": [{"modality", "path", "format", "note"?}],
"finished", "num_new_tokens"}, for chat {"turns": [{"user", "text", "media", ...}]}.

Gin (t5x style: --gin_file=F, then --gin.KEY=VALUE) tunes the rest: generation settings per
output (`music/GenerationSettings.top_k = 250`), the chat template
(`chat_style.template = 'mmgpt'`), instructions (`base_instruction.fixed`), sharding
(`load_model.use_mesh = True`); see tpu_configs/inference/.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from anygpt_jax import gin_utils, storage
from anygpt_jax.inference.engine_flags import (
    add_engine_flags,
    check_engine_flags,
    engine_from_flags,
)

DEFAULT_INTERACTIVE_OUT = "infer_output"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Flags and `KEY=VALUE` gin bindings; usage errors exit through argparse."""
    parser = argparse.ArgumentParser(
        prog="python -m anygpt_jax.infer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_flags(parser)
    parser.add_argument("--mode", choices=("base", "chat"), default="base",
                        help="base: pre-training templates; chat: instruction-tuned dialogue")
    parser.add_argument("--requests", help="JSONL file of requests (batch mode)")
    parser.add_argument("--out", help="output directory (batch: required, must not exist or "
                        f"be empty; interactive: default {DEFAULT_INTERACTIVE_OUT})")
    args, bindings = gin_utils.parse_flags(parser, argv)
    if args.requests and not args.out:
        parser.error("--requests needs --out DIR for results.jsonl and media")
    check_engine_flags(parser, args)
    return args, bindings


def parse_gin(gin_files: list[str], bindings: list[str], search_paths: list[str] = ()) -> None:
    """Parses gin files then bindings for inference; raises ConfigError naming the fault."""
    # Registers every configurable the inference configs may name.
    import anygpt_jax.inference.media  # noqa: F401
    import anygpt_jax.inference.session  # noqa: F401
    import anygpt_jax.modalities.soundstorm  # noqa: F401
    import anygpt_jax.partitioning  # noqa: F401
    import anygpt_jax.prompts  # noqa: F401

    gin_utils.parse_gin_files(gin_files, bindings, search_paths)


def _check_paths(args: argparse.Namespace) -> str | None:
    """What is wrong with the paths given (unreachable bucket, missing file, an output that
    exists), or None; each path may be local or gs://."""
    try:
        if args.requests:
            storage.check_access(args.requests)
            if not storage.isfile(args.requests):
                return f"--requests {args.requests}: no such file"
        if args.out:
            storage.check_access(args.out, write=True)
    except storage.StorageError as e:
        return str(e)
    if args.requests:  # run_batch refuses it too
        state = storage.dir_state(args.out)
        if state in ("committed", "foreign") or (state != "missing"
                                                 and not storage.isdir(args.out)):
            return f"--out {args.out} already exists and is not empty; refusing to overwrite"
    return None


def main(argv: list[str] | None = None, stdin: IO[str] | None = None,
         stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Runs inference; returns the exit status (1 on a bad setup or any failed request)."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
    problem = _check_paths(args)  # before the model loads
    if problem:
        print(f"error: {problem}", file=stderr)
        return 1
    try:
        parse_gin(args.gin_file, bindings, args.gin_search_path)
    except gin_utils.ConfigError as e:
        print(f"error: {e}", file=stderr)
        return 1
    from anygpt_jax.inference.session import run_batch, run_interactive

    try:
        engine = engine_from_flags(args)
        if args.requests:
            done, failed = run_batch(engine, args.requests, args.mode, args.out)
        else:
            failed = run_interactive(engine, args.mode, args.out or DEFAULT_INTERACTIVE_OUT,
                                     stdin, stdout, stderr)
            done = None
    except (ValueError, FileNotFoundError, FileExistsError, storage.StorageError) as e:
        print(f"error: {e}", file=stderr)
        return 1
    if done is not None:
        print(f"{done + failed} requests: {done} done, {failed} failed; results in "
              f"{os.path.join(args.out, 'results.jsonl')}", file=stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
