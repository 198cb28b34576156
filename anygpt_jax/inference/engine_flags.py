"""The flags that make an inference Engine, shared by the infer and serve command lines."""

from __future__ import annotations

import argparse

from anygpt_jax.inference.renderers import tokenizer_flag
from anygpt_jax.modalities.registry import media_modalities, media_modality
from anygpt_jax.model.quantize import WEIGHT_FORMATS


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """--ckpt, the tokenizer and renderer directories, the seed and decoding limits."""
    parser.add_argument("--ckpt", required=True, help="model directory (converted or trained)")
    for m in media_modalities():
        parser.add_argument(tokenizer_flag(m), metavar="DIR",
                            help=f"converted {m} tokenizer directory"
                            + (" (or 'demo')" if media_modality(m).demo else ""))
    parser.add_argument("--unclip_pipeline", metavar="DIR",
                        help="diffusers StableUnCLIPImg2ImgPipeline directory to render images")
    parser.add_argument("--soundstorm", metavar="DIR",
                        help="converted SoundStorm directory to turn speech units into WAV")
    parser.add_argument("--render_steps", type=int, default=None,
                        help="unCLIP denoising steps (default MediaSettings.render_steps, 20)")
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default="float32",
                        help="how the weights are held: as stored (float32), bfloat16, or int8 "
                        "with a scale per output channel (layers and LM head; a quarter of "
                        "the bytes)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and instruction seed")
    parser.add_argument("--unconstrained", action="store_true",
                        help="do not constrain decoding to well-formed modality spans")
    parser.add_argument("--max_prompt_tokens", type=int, default=None,
                        help="refuse longer prompts, per request (the model's context, "
                        "max_position_embeddings less max_new_tokens, always applies)")


def check_engine_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits through argparse on a value add_engine_flags' flags cannot take."""
    if args.render_steps is not None and args.render_steps < 1:
        parser.error(f"--render_steps must be >= 1, got {args.render_steps}")


def engine_from_flags(args: argparse.Namespace):
    """The Engine those flags describe (loads the model; tokenizers load on first use)."""
    from anygpt_jax.inference.media import MediaCodecs, MediaSettings
    from anygpt_jax.inference.session import Engine, load_model

    model = load_model(args.ckpt, weights=args.weights)
    dirs = {m: getattr(args, f"{m}_tokenizer") for m in media_modalities()}
    media = MediaSettings().overridden(dirs, unclip_pipeline=args.unclip_pipeline,
                                       soundstorm=args.soundstorm, render_steps=args.render_steps)
    return Engine(model, MediaCodecs(model.vocab, media), seed=args.seed,
                  constrain=not args.unconstrained, max_prompt_tokens=args.max_prompt_tokens)
