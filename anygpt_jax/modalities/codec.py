"""Converted codec directories and the batched, jitted runtime both audio tokenizers share.

A converted directory holds `config.json` ({"format", "kind", "seanet": SEANetConfig fields,
"source_config": the original model's config}) and `params.safetensors`: float32 numpy arrays
under flat names like `encoder/layers_0/kernel` (shapes as in audio_layers' docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from anygpt_jax.io_utils import check_param_shapes
from anygpt_jax.modalities import audio_io
from anygpt_jax.modalities.audio_layers import SEANetCodec, SEANetConfig, ceil_div
from anygpt_jax.modalities.weights import load_params_file, read_weights_config, save_weights_dir

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
FORMAT = "anygpt_jax.seanet_codec/2"  # 2: LSTM weights per direction, PyTorch layout
PRECISIONS = {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH,
              "default": lax.Precision.DEFAULT}


def expected_param_shapes(config: SEANetConfig) -> dict[str, tuple[int, ...]]:
    """Flat 'a/b/c' parameter names of a codec and their shapes (no computation)."""
    module = SEANetCodec(config)
    wav = jax.ShapeDtypeStruct((1, 2 * config.hop_length, config.channels), jnp.float32)
    tree = jax.eval_shape(lambda w: module.init(jax.random.PRNGKey(0), w)["params"], wav)
    flat = flax.traverse_util.flatten_dict(tree, sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def save_codec(directory: str, kind: str, config: SEANetConfig, params: dict[str, np.ndarray],
               source_config: dict) -> None:
    """Writes config.json and params.safetensors (flat 'a/b/c' names) into `directory`.

    `params` must fit `config` (see check_params; the converters check before writing).
    """
    meta = {"format": FORMAT, "kind": kind, "seanet": config.to_dict(),
            "source_config": source_config}
    save_weights_dir(directory, meta, params)


def check_params(config: SEANetConfig, params: dict[str, np.ndarray], where: str) -> None:
    """Raises ValueError naming every missing, unexpected or wrongly shaped parameter."""
    check_param_shapes(expected_param_shapes(config), params, where)


def load_codec(directory: str, kind: str) -> tuple[SEANetConfig, dict, dict]:
    """Reads a converted directory -> (config, nested params, the original model's config)."""
    meta, config_path, params_path = read_weights_config(
        directory, "codec directory", "convert a checkpoint with converters/ first")
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        hint = "" if meta.get("format") == FORMAT else " (convert the checkpoint again)"
        raise ValueError(f"{config_path}: expected format {FORMAT!r} kind {kind!r}, got "
                         f"{meta.get('format')!r} kind {meta.get('kind')!r}{hint}")
    config = SEANetConfig.from_dict(meta["seanet"])
    flat = load_params_file(params_path)
    check_params(config, flat, where=params_path)
    params = flax.traverse_util.unflatten_dict(flat, sep="/")
    return config, params, meta.get("source_config", {})


class AudioCodec:
    """Batched, jitted encode/decode of a converted SEANet codec on mono numpy audio.

    Batches are padded to a multiple of `bucket_seconds` (fewer compilations) and carry
    per-item lengths, so each item's codes equal those of the item alone. `precision`
    "highest" gives the reference's fp32 codes; on TPU "default" (bf16 passes) is faster but
    may flip near-tied codes.
    """

    kind: str = ""

    def __init__(self, config: SEANetConfig, params: dict, *, precision: str = "highest",
                 bucket_seconds: float = 1.0):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.config = config
        self.params = jax.tree_util.tree_map(jnp.asarray, params)
        module = SEANetCodec(config, PRECISIONS[precision])
        self._bucket = config.hop_length * max(1, round(bucket_seconds * self.frame_rate))
        self._encode = jax.jit(
            lambda p, wav, lengths, n_q: module.apply(
                {"params": p}, wav[..., None], lengths, n_q, method=SEANetCodec.encode),
            static_argnums=3)
        self._decode = jax.jit(
            lambda p, codes, lengths: module.apply(
                {"params": p}, codes, lengths, method=SEANetCodec.decode)[..., 0])

    @classmethod
    def load(cls, directory: str, **kwargs) -> AudioCodec:
        """Loads a directory written by this codec's converter (see converters/)."""
        config, params, _ = load_codec(directory, cls.kind)
        return cls(config, params, **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> float:
        return self.config.sample_rate / self.config.hop_length

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def read(self, path: str) -> np.ndarray:
        """The mono waveform of a local or gs:// audio file at the model rate, as
        `encode_arrays` takes it; errors name the file."""
        return audio_io.load_audio(path, self.sample_rate)

    @property
    def n_q(self) -> int:
        return self.config.n_q

    def num_frames(self, num_samples: int) -> int:
        """Frames the encoder makes of `num_samples` samples at the model rate."""
        return ceil_div(num_samples, self.hop_length)

    def encode(self, waveform: np.ndarray, sample_rate: int, n_q: int | None = None) -> np.ndarray:
        """Audio (samples,) or (channels, samples) at `sample_rate` -> int32 codes (n_q, frames)."""
        return self.encode_batch([waveform], sample_rate, n_q)[0]

    def encode_batch(self, waveforms: Sequence[np.ndarray], sample_rate: int,
                     n_q: int | None = None) -> list[np.ndarray]:
        """Encodes several clips of any lengths in one padded batch; codes as from `encode`."""
        if len(waveforms) == 0:
            raise ValueError("encode_batch: no waveforms given")
        mono = [audio_io.prepare(w, sample_rate, self.sample_rate, name=f"waveforms[{i}]")
                for i, w in enumerate(waveforms)]
        return self.encode_arrays(mono, n_q)

    def encode_file(self, path: str, n_q: int | None = None) -> np.ndarray:
        """Reads, downmixes and resamples an audio file, then encodes it."""
        return self.encode_arrays([audio_io.load_audio(path, self.sample_rate)], n_q)[0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (n, frames) of the first n RVQ layers -> mono float32 (frames * hop,)."""
        return self.decode_arrays([codes])[0]

    def decode_batch(self, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Decodes several code arrays (same n, any frames) in one padded batch."""
        if len(codes) == 0:
            raise ValueError("decode_batch: no codes given")
        return self.decode_arrays(list(codes))

    def encode_arrays(self, waveforms: list[np.ndarray],
                      n_q: int | None = None) -> list[np.ndarray]:
        """Mono float32 arrays at the model rate -> int32 codes (n_q, frames) each, one batch."""
        n_q = self._check_n_q(n_q)
        lengths = np.array([len(w) for w in waveforms], np.int32)
        if lengths.size == 0 or lengths.min() == 0:
            raise ValueError(f"encode_arrays: need one or more non-empty waveforms, got lengths "
                             f"{lengths.tolist()}")
        total = ceil_div(int(lengths.max()), self._bucket) * self._bucket
        batch = np.zeros((len(waveforms), total), np.float32)
        for b, w in enumerate(waveforms):
            batch[b, : len(w)] = w
        full = bool(np.all(lengths == total))  # then the cheaper static padding applies
        codes = np.asarray(self._encode(self.params, batch, None if full else lengths, n_q))
        return [codes[:, b, : self.num_frames(n)] for b, n in enumerate(lengths)]

    def decode_arrays(self, codes: list[np.ndarray]) -> list[np.ndarray]:
        """Codes (n, frames) each (same n) -> mono float32 waveforms of frames * hop samples."""
        codes = [self._check_codes(c, i) for i, c in enumerate(codes)]
        if len({c.shape[0] for c in codes}) > 1:
            raise ValueError(f"codes in one batch need the same number of RVQ layers, got "
                             f"{[c.shape[0] for c in codes]}")
        frames = np.array([c.shape[1] for c in codes], np.int32)
        bucket = self._bucket // self.hop_length
        total = ceil_div(int(frames.max()), bucket) * bucket
        batch = np.zeros((codes[0].shape[0], len(codes), total), np.int32)
        for b, c in enumerate(codes):
            batch[:, b, : c.shape[1]] = c
        full = bool(np.all(frames == total))
        wav = np.asarray(self._decode(self.params, batch, None if full else frames))
        return [wav[b, : n * self.hop_length] for b, n in enumerate(frames)]

    def _check_n_q(self, n_q: int | None) -> int:
        n_q = self.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be in 1..{self.n_q}, got {n_q}")
        return n_q

    def _check_codes(self, codes: np.ndarray, index: int) -> np.ndarray:
        codes = np.asarray(codes)
        name = f"codes[{index}]"
        if codes.ndim != 2 or not 1 <= codes.shape[0] <= self.n_q or codes.shape[1] == 0:
            raise ValueError(f"{name}: expected shape (n_q <= {self.n_q}, frames >= 1), got "
                             f"{codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"{name}: expected integer codes, got dtype {codes.dtype}")
        bad = codes[(codes < 0) | (codes >= self.config.codebook_size)]
        if bad.size:
            raise ValueError(
                f"{name}: code {int(bad[0])} outside 0..{self.config.codebook_size - 1}")
        return codes.astype(np.int32)
