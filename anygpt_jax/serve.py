"""`python -m anygpt_jax.serve --ckpt DIR`: AnyGPT over HTTP (an OpenAI-shaped chat API).

Binds 127.0.0.1:8000 unless --host/--port say otherwise; takes the tokenizer and renderer
directories `python -m anygpt_jax.infer` takes. Concurrent requests are generated together:
continuous batching for sampling and greedy decoding, batched rounds for beam search and base
mode (anygpt_jax/serving/scheduler.py); the API is described in
anygpt_jax/serving/app.py. An API key is asked for when --api_key or ANYGPT_API_KEY is set
(`Authorization: Bearer KEY`). Gin (--gin_file, --gin.KEY=VALUE) tunes generation as for infer.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from anygpt_jax import gin_utils, storage
from anygpt_jax.inference.engine_flags import add_engine_flags, check_engine_flags

API_KEY_ENV = "ANYGPT_API_KEY"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Flags and `KEY=VALUE` gin bindings; usage errors exit through argparse."""
    parser = argparse.ArgumentParser(prog="python -m anygpt_jax.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_flags(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default local)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api_key", default=None,
                        help=f"require this key (default: ${API_KEY_ENV}, else no key)")
    parser.add_argument("--max_batch", type=int, default=16,
                        help="requests generated together in one round")
    parser.add_argument("--batching", choices=("continuous", "rounds"), default="continuous",
                        help="continuous: sampling and greedy requests join the running "
                        "generation between decode steps (others go in rounds); rounds: "
                        "every request waits for the round in progress")
    parser.add_argument("--gather_ms", type=float, default=10.0,
                        help="how long a round waits for more requests once one is in")
    parser.add_argument("--max_upload_mb", type=float, default=20.0,
                        help="media bytes one request may carry")
    parser.add_argument("--media_ttl_s", type=float, default=3600.0,
                        help="seconds a generated file stays downloadable (then deleted)")
    parser.add_argument("--media_dir", default=None,
                        help="where uploads and generated media go (default: a temp dir)")
    parser.add_argument("--template", choices=("anygpt", "mmgpt"), default="anygpt",
                        help="chat template: the paper's (anygpt) or the release's (mmgpt)")
    args, bindings = gin_utils.parse_flags(parser, argv)
    check_engine_flags(parser, args)
    if (args.max_batch < 1 or args.max_upload_mb <= 0 or args.gather_ms < 0
            or args.media_ttl_s <= 0):
        parser.error("--max_batch must be >= 1, --max_upload_mb > 0, --gather_ms >= 0 and "
                     "--media_ttl_s > 0")
    return args, bindings


def main(argv: list[str] | None = None) -> int:
    """Loads the model and serves until interrupted; 1 on a bad set-up."""
    args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
    from anygpt_jax import infer

    try:
        infer.parse_gin(args.gin_file, bindings, args.gin_search_path)
    except gin_utils.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import uvicorn

    from anygpt_jax.inference.engine_flags import engine_from_flags
    from anygpt_jax.serving.app import make_app
    from anygpt_jax.serving.messages import MediaStore
    from anygpt_jax.serving.scheduler import BatchScheduler

    try:
        storage.check_access(args.ckpt)
        engine = engine_from_flags(args)
    except (ValueError, FileNotFoundError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    media_dir = args.media_dir or tempfile.mkdtemp(prefix="anygpt-serve-")
    store = MediaStore(os.path.join(media_dir, "uploads"),
                       int(args.max_upload_mb * 1024 * 1024))
    out = os.path.join(media_dir, "generated")
    os.makedirs(out, exist_ok=True)  # local: uploads and renders are files on this host
    scheduler = BatchScheduler(engine, out, args.max_batch, args.template,
                               gather_ms=args.gather_ms,
                               continuous=args.batching == "continuous")
    app = make_app(scheduler, store, os.path.basename(os.path.normpath(args.ckpt)),
                   args.api_key or os.environ.get(API_KEY_ENV), media_ttl_s=args.media_ttl_s)
    print(f"serving {args.ckpt} on http://{args.host}:{args.port}/ (media in {media_dir})",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    scheduler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
