"""SoundStorm: semantic speech units -> all 8 SpeechTokenizer layers -> 16 kHz speech.

    ss = SoundStorm.load(DIR)          # DIR from `python -m converters.soundstorm`
    codes = ss.generate(units, prompt_codes=None, steps=3, seed=0)  # (batch, 8, frames)
    wav = speak(units, speech_tokenizer, ss, voice_prompt_wav="voice.wav")

AnyGPT's LLM emits RVQ layer 1 only; SoundStorm fills in layers 2-8, optionally in the voice
of a prompt whose 8 layers are put in front (`text|speech|...|voice.wav` in AnyGPT's CLI).
A converted directory holds `config.json` ({"format", "soundstorm": SoundStormConfig fields,
"source"}) and `params.safetensors` (float32, flat 'a/b/c' names, conformer layers stacked).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from anygpt_jax import partitioning
from anygpt_jax.io_utils import check_param_shapes
from anygpt_jax.modalities import audio_io
from anygpt_jax.modalities.audio_layers import ceil_div
from anygpt_jax.modalities.codec import PRECISIONS
from anygpt_jax.modalities.soundstorm_generate import decode_plan, maskgit_decode, top_k_size
from anygpt_jax.modalities.soundstorm_model import SoundStormConfig, SoundStormNet
from anygpt_jax.modalities.weights import load_params_file, read_weights_config, save_weights_dir
from anygpt_jax.model.params import match_layers

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
FORMAT = "anygpt_jax.soundstorm/1"
SILENCE_PEAK = 1e-4  # a voice prompt quieter than this (-80 dBFS) carries no voice


def expected_param_shapes(config: SoundStormConfig) -> dict[str, tuple[int, ...]]:
    """Flat 'a/b/c' parameter names of SoundStormNet(config) and their shapes."""
    codes = jax.ShapeDtypeStruct((1, 2, config.num_quantizers), jnp.int32)
    semantic = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    tree = jax.eval_shape(
        lambda c, s: SoundStormNet(config).init(jax.random.PRNGKey(0), c, s)["params"],
        codes, semantic)
    flat = flax.traverse_util.flatten_dict(tree, sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def check_params(config: SoundStormConfig, params: dict[str, np.ndarray], where: str) -> None:
    """Raises ValueError naming every missing, unexpected or wrongly shaped parameter."""
    check_param_shapes(expected_param_shapes(config), params, where)


def save_soundstorm(directory: str, config: SoundStormConfig, params: dict[str, np.ndarray],
                    source: dict[str, Any]) -> None:
    """Writes config.json and params.safetensors (flat names, checked against `config`)."""
    check_params(config, params, where=directory)
    meta = {"format": FORMAT, "soundstorm": config.to_dict(), "source": source}
    save_weights_dir(directory, meta, params)


def load_soundstorm(directory: str) -> tuple[SoundStormConfig, dict, dict]:
    """Reads a converted directory -> (config, nested params, source description)."""
    meta, config_path, params_path = read_weights_config(
        directory, "SoundStorm directory",
        "convert a checkpoint with `python -m converters.soundstorm`")
    if meta.get("format") != FORMAT or not isinstance(meta.get("soundstorm"), dict):
        raise ValueError(f"{config_path}: expected format {FORMAT!r} with a 'soundstorm' "
                         f"object, got format {meta.get('format')!r}")
    config = SoundStormConfig.from_dict(meta["soundstorm"], where=config_path)
    flat = load_params_file(params_path)
    check_params(config, flat, where=params_path)
    return config, flax.traverse_util.unflatten_dict(flat, sep="/"), meta.get("source", {})


@gin.configurable
class SoundStorm:
    """Batched, jitted SoundStorm decoding on numpy codes (SpeechTokenizer layout).

    Settings (gin-configurable): `steps` decoding steps of the first acoustic layer (AnyGPT's
    CLIs use 3, its speech config 4); `greedy` argmax on the last step (AnyGPT: True);
    `sample` Gumbel sampling on the middle steps (False: argmax there too, deterministic);
    `top_k_thres` keeps the top ceil((1 - thres) * 1024) codes when sampling; `full_levels`
    layers decoded iteratively (AnyGPT: 1); `keep_prompt` (see soundstorm_generate);
    `bucket_frames` pads lengths to a multiple, so few shapes compile; `scan_layers` runs the
    conformer's layers under a scan (one compiled layer; False unrolls them: ~3% faster on CPU,
    compile time growing with depth); `precision` of the matmuls;
    `mesh` (one host's devices, see anygpt_jax.partitioning) splits every batch over the axes
    of the "activation_batch" rule, padding it to a multiple of their size.
    """

    def __init__(self, config: SoundStormConfig, params: dict, *, steps: int = 3,
                 greedy: bool = True, sample: bool = True, top_k_thres: float = 0.7,
                 full_levels: int = 1, keep_prompt: bool = True, bucket_frames: int = 50,
                 scan_layers: bool = True, precision: str = "highest", mesh: Mesh | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if bucket_frames < 1:
            raise ValueError(f"bucket_frames must be >= 1, got {bucket_frames}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0 <= full_levels <= config.num_quantizers:
            raise ValueError(f"full_levels must be in 0..{config.num_quantizers}, got "
                             f"{full_levels}")
        self.config, self.mesh = config, mesh
        conformer = match_layers(params["conformer"], scan_layers, config.depth)
        params = {**params, "conformer": conformer}
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        if mesh is not None:  # weights replicated, batches split over the batch axes
            self.params = jax.device_put(self.params, NamedSharding(mesh, PartitionSpec()))
        self.steps, self.greedy, self.sample = steps, greedy, sample
        self.full_levels = full_levels
        self.keep_prompt, self.bucket_frames = keep_prompt, bucket_frames
        self.top_k = top_k_size(config.codebook_size, top_k_thres)
        self.net = SoundStormNet(config, PRECISIONS[precision], scan_layers)
        self._decode = jax.jit(self._decode_impl)
        self._logits = jax.jit(lambda p, c, s, v: self.net.apply({"params": p}, c, s, v))

    @classmethod
    def load(cls, directory: str, **kwargs) -> SoundStorm:
        """Loads a directory written by `python -m converters.soundstorm`."""
        config, params, _ = load_soundstorm(directory)
        return cls(config, params, **kwargs)

    @property
    def num_quantizers(self) -> int:
        """Acoustic layers predicted (7 for SpeechTokenizer's 8-layer RVQ)."""
        return self.config.num_quantizers

    def logits(self, codes: np.ndarray, semantic: np.ndarray) -> np.ndarray:
        """One network pass: acoustic codes (batch, frames, Q; mask code = codebook_size)
        and semantic codes (batch, frames) -> float32 logits (batch, frames, Q, codebook)."""
        codes, semantic = np.asarray(codes, np.int32), np.asarray(semantic, np.int32)
        valid = np.ones(semantic.shape, bool)
        return np.asarray(self._logits(self.params, codes, semantic, valid))

    def generate(self, semantic_units: np.ndarray, prompt_codes: np.ndarray | None = None, *,
                 steps: int | None = None, seed: int = 0) -> np.ndarray:
        """Semantic units (batch, frames) -> int32 codes (batch, 1 + Q, frames), layer 1 being
        the units; `prompt_codes` (1 + Q, prompt_frames) of a voice to continue, or None;
        `steps` defaults to the instance's; `seed` drives the sampling."""
        units = self._check_units(semantic_units)
        codes = self.generate_batch(list(units), prompt_codes, steps=steps, seed=seed)
        return np.stack(codes)

    def generate_batch(self, semantic_units: Sequence[np.ndarray],
                       prompt_codes: np.ndarray | None = None, *, steps: int | None = None,
                       seed: int = 0) -> list[np.ndarray]:
        """Units of any lengths (frames_i,) -> codes (1 + Q, frames_i) each, decoded in one
        padded batch; each item comes out as it would alone (same seed, same batch slot)."""
        if len(semantic_units) == 0:
            raise ValueError("semantic_units: no sequences given")
        units = []
        for i, u in enumerate(map(np.asarray, semantic_units)):
            if u.ndim != 1:
                raise ValueError(f"semantic_units[{i}]: expected (frames,) codes, got {u.shape}")
            units.append(self._check_units(u[None], name=f"semantic_units[{i}]")[0])
        prompt = self._check_prompt(prompt_codes)
        prompt_len = prompt.shape[1]
        lengths = np.array([prompt_len + len(u) for u in units], np.int32)
        total = ceil_div(int(lengths.max()), self.bucket_frames) * self.bucket_frames
        semantic = np.zeros((len(units), total), np.int32)
        codes = np.full((len(units), total, self.num_quantizers), self.config.mask_id, np.int32)
        for b, u in enumerate(units):
            semantic[b, :prompt_len] = prompt[0]
            semantic[b, prompt_len : prompt_len + len(u)] = u
            codes[b, :prompt_len] = prompt[1:].T
        frame = np.arange(total)[None, :]
        valid = frame < lengths[:, None]
        out = self.decode_frames(semantic, codes, valid & (frame >= prompt_len), valid,
                                 steps=steps, seed=seed)
        return [np.concatenate([u[None], out[b, prompt_len : prompt_len + len(u)].T])
                for b, u in enumerate(units)]

    def decode_frames(self, semantic: np.ndarray, codes: np.ndarray, generate: np.ndarray,
                      valid: np.ndarray, *, steps: int | None = None, seed: int = 0
                      ) -> np.ndarray:
        """The decoder on whole sequences: semantic (batch, frames), acoustic codes (batch,
        frames, Q), and masks (batch, frames) of the frames to generate and of real frames (a
        prefix of each row) -> int32 codes (batch, frames, Q), prompt frames included (see
        soundstorm_generate)."""
        steps = self.steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        arrays = [np.asarray(semantic, np.int32), np.asarray(codes, np.int32),
                  np.asarray(generate, bool), np.asarray(valid, bool)]
        batch = arrays[0].shape[0]
        if self.mesh is not None:  # empty rows (no valid frame) fill the batch up
            pad = -batch % partitioning.batch_shards(self.mesh)
            arrays = [np.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in arrays]
        plan, counts, num_passes = decode_plan(steps, self.num_quantizers, self.full_levels,
                                               arrays[3].sum(axis=1))
        if self.mesh is not None:
            rows = partitioning.logical_sharding(("activation_batch",), self.mesh)
            arrays = [jax.device_put(a, rows) for a in arrays]
            counts = jax.device_put(
                counts, partitioning.logical_sharding((None, "activation_batch"), self.mesh))
        out = self._decode(self.params, *arrays, plan, np.int32(num_passes), counts,
                           np.int32(steps), jax.random.PRNGKey(seed))
        return np.asarray(out)[:batch]

    def _decode_impl(self, params, semantic, codes, generate, valid, plan, num_passes, counts,
                     steps, key):
        logits_fn = functools.partial(
            lambda p, c, s, v: self.net.apply({"params": p}, c, s, v), params)
        return maskgit_decode(
            logits_fn, semantic, codes, generate, valid, plan, num_passes, counts, steps, key,
            top_k=self.top_k, greedy=self.greedy, sample=self.sample,
            keep_prompt=self.keep_prompt, mask_id=self.config.mask_id)

    def _check_units(self, units: np.ndarray, name: str = "semantic_units") -> np.ndarray:
        units = np.asarray(units)
        if units.ndim != 2 or 0 in units.shape:
            raise ValueError(f"{name}: expected (batch, frames >= 1) codes, got {units.shape}")
        return _check_range(units, self.config.num_semantic, name)

    def _check_prompt(self, prompt: np.ndarray | None) -> np.ndarray:
        rows = 1 + self.num_quantizers
        if prompt is None:
            return np.zeros((rows, 0), np.int32)
        prompt = np.asarray(prompt)
        if prompt.ndim != 2 or prompt.shape[0] != rows or prompt.shape[1] == 0:
            raise ValueError(f"prompt_codes: expected ({rows} RVQ layers, frames >= 1), got "
                             f"{prompt.shape}")
        _check_range(prompt[:1], self.config.num_semantic, "prompt_codes[0]")
        _check_range(prompt[1:], self.config.codebook_size, "prompt_codes[1:]")
        return prompt.astype(np.int32)


def _check_range(codes: np.ndarray, size: int, name: str) -> np.ndarray:
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{name}: expected integer codes, got dtype {codes.dtype}")
    bad = codes[(codes < 0) | (codes >= size)]
    if bad.size:
        raise ValueError(f"{name}: code {int(bad[0])} outside 0..{size - 1}")
    return codes.astype(np.int32)


def voice_prompt_codes(speech_tokenizer, voice_prompt_wav, max_prompt_seconds: float | None
                       ) -> np.ndarray:
    """A voice prompt (a file path, or a (waveform, sample_rate) pair) -> its codes (n_q,
    frames), cut to `max_prompt_seconds` as the fork's voice conversion cuts to 150 frames.

    Any rate is resampled; missing, unreadable, empty or silent audio raises AudioError.
    """
    rate = speech_tokenizer.sample_rate
    if isinstance(voice_prompt_wav, (str, os.PathLike)):
        name = os.fspath(voice_prompt_wav)
        wav = audio_io.load_audio(name, rate)
    elif isinstance(voice_prompt_wav, tuple) and len(voice_prompt_wav) == 2:
        name = "voice prompt"
        wav = audio_io.prepare(voice_prompt_wav[0], voice_prompt_wav[1], rate, name=name)
    else:
        raise audio_io.AudioError(
            f"voice_prompt_wav: expected a file path or a (waveform, sample_rate) pair, got "
            f"{type(voice_prompt_wav).__name__}")
    peak = float(np.max(np.abs(wav)))
    if peak < SILENCE_PEAK:
        raise audio_io.AudioError(f"{name}: the voice prompt is silent (peak amplitude "
                                  f"{peak:.2g}); give a recording of the voice to clone, or none")
    codes = speech_tokenizer.encode_arrays([wav])[0]
    if max_prompt_seconds is not None:
        codes = codes[:, : max(1, round(max_prompt_seconds * speech_tokenizer.frame_rate))]
    return codes


@gin.configurable(denylist=["semantic_units", "speech_tokenizer", "soundstorm"])
def speak(semantic_units: np.ndarray, speech_tokenizer, soundstorm: SoundStorm,
          voice_prompt_wav=None, *, max_prompt_seconds: float | None = 3.0,
          steps: int | None = None, seed: int = 0) -> np.ndarray:
    """Semantic units (frames,) or (batch, frames) -> float32 16 kHz speech (samples,) or
    (batch, samples): SoundStorm fills RVQ layers 2-8, the SpeechTokenizer decodes all 8.

    `voice_prompt_wav` (path or (waveform, rate)) is encoded with the SpeechTokenizer and
    its first `max_prompt_seconds` prepended, so the speech takes that voice.
    """
    units = np.asarray(semantic_units)
    single = units.ndim == 1
    units = units[None] if single else units
    if speech_tokenizer.n_q != 1 + soundstorm.num_quantizers:
        raise ValueError(f"the SpeechTokenizer has {speech_tokenizer.n_q} RVQ layers; this "
                         f"SoundStorm needs {1 + soundstorm.num_quantizers}")
    if speech_tokenizer.config.codebook_size != soundstorm.config.codebook_size:
        raise ValueError(f"codebook sizes differ: SpeechTokenizer "
                         f"{speech_tokenizer.config.codebook_size}, SoundStorm "
                         f"{soundstorm.config.codebook_size}")
    prompt = None
    if voice_prompt_wav is not None:
        prompt = voice_prompt_codes(speech_tokenizer, voice_prompt_wav, max_prompt_seconds)
    codes = soundstorm.generate(units, prompt, steps=steps, seed=seed)
    wavs = np.stack(speech_tokenizer.decode_batch(list(codes)))
    return wavs[0] if single else wavs
