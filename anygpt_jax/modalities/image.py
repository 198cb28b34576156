"""SEED image tokenizer in JAX: images <-> 32 codes (0..8191) each, and unCLIP rendering.

    tok = ImageTokenizer.load(DIR)          # DIR from `python -m converters.seed`
    codes = tok.encode(images)              # int32 (batch, 32): PIL images, paths or arrays
    emb = tok.embed(codes)                  # float32 (batch, 1024) unCLIP image embeddings
    pics = tok.render(codes, seed=0)        # PIL images (needs the `render` extra)

Preprocessing is SEED's: any mode -> RGB (alpha dropped, as PIL's convert does), resize to
224x224 bicubic without keeping the aspect ratio, scale to [0, 1], CLIP mean/std. `image_ids`
and `image_codes_from_ids` map codes to and from the merged vocabulary (anygpt_jax.vocab).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from anygpt_jax import storage
from anygpt_jax.modalities.image_model import (
    CLIP_MEAN,
    CLIP_STD,
    SeedConfig,
    SeedTokenizerModel,
    load_seed,
)
from anygpt_jax.model.params import match_layers

MODALITY = "image"
PRECISIONS = {
    "highest": lax.Precision.HIGHEST,
    "high": lax.Precision.HIGH,
    "default": lax.Precision.DEFAULT,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
UNCLIP_PIPELINE = "stabilityai/stable-diffusion-2-1-unclip"
RENDER_REQUIREMENT = (
    "render() needs PyTorch and diffusers (StableUnCLIPImg2ImgPipeline): "
    "pip install 'anygpt-jax[render]' (or: pip install diffusers torch)"
)


# Why PIL could not open an image file, said the same way on every run (a skipped item's reason
# is part of a shard's sidecar, which reruns and retries must write identically).
UNIDENTIFIED = "not a file in an image format PIL can identify"


class ImageError(ValueError):
    """An image that cannot be used: unreadable file, empty, or an unsupported array."""


def load_image(source: Any, name: str = "image"):
    """A path, PIL image or array (H, W), (H, W, 1|3|4) -> an RGB PIL image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not storage.isfile(path):
            raise FileNotFoundError(f"{name}: no such image file: {path}")
        try:
            with Image.open(io.BytesIO(storage.read_bytes(path))) as img:
                img.load()
                return to_rgb(img, path)
        except UnidentifiedImageError as e:  # its message holds a memory address: not kept
            raise ImageError(f"{path}: cannot read image ({UNIDENTIFIED})") from e
        except (OSError, SyntaxError) as e:
            raise ImageError(f"{path}: cannot read image ({e})") from e
    if isinstance(source, Image.Image):
        return to_rgb(source, name)
    if isinstance(source, np.ndarray):
        return to_rgb(_array_to_pil(source, name), name)
    raise ImageError(
        f"{name}: expected a path, PIL image or numpy array, got {type(source).__name__}"
    )


def _array_to_pil(arr: np.ndarray, name: str):
    from PIL import Image

    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(
            f"{name}: expected an array (H, W) or (H, W, 1|3|4) (channels last), "
            f"got shape {arr.shape}"
        )
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ImageError(f"{name}: expected uint8 or float in [0, 1], got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)) or arr.min(initial=0) < 0 or arr.max(initial=0) > 1:
            raise ImageError(f"{name}: float pixels must be finite and in [0, 1]")
        arr = np.round(arr * 255).astype(np.uint8)
    return Image.fromarray(arr)


def to_rgb(img, name: str = "image"):
    """Any PIL mode -> RGB, as SEED's `convert('RGB')`; 16-bit and float gray scaled to 8 bits."""
    from PIL import Image

    if img.width == 0 or img.height == 0:
        raise ImageError(f"{name}: empty image ({img.width}x{img.height})")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL's convert clips these to 0..255; rescale by the mode's range instead.
        arr = np.asarray(img, np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255 + 0.5, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def preprocess(images: Sequence[Any], size: int = 224) -> np.ndarray:
    """Images (paths, PIL, arrays) -> float32 (batch, size, size, 3), CLIP-normalized."""
    from PIL import Image

    out = np.empty((len(images), size, size, 3), np.float32)
    for i, source in enumerate(images):
        img = load_image(source, name=f"images[{i}]")
        img = img.resize((size, size), Image.BICUBIC)
        out[i] = np.asarray(img, np.float32) / 255.0
    return (out - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def _bucket(n: int, max_batch: int, multiple: int = 1) -> int:
    """Smallest power of two >= n, capped at max_batch and rounded up to a multiple of
    `multiple` (the devices a batch is split over): few shapes, few compilations."""
    size = min(max_batch, 1 << max(0, (n - 1).bit_length()))
    return -(-size // multiple) * multiple


class ImageTokenizer:
    """SEED tokenizer v2: batched, jitted encode (images -> codes) and embed (codes -> unCLIP).

    `devices` (e.g. `jax.local_devices()` for bulk tokenization) splits each batch over several
    devices, data-parallel with replicated weights; batches are padded to a multiple of them.
    """

    def __init__(
        self,
        config: SeedConfig,
        params: dict,
        *,
        precision: str = "highest",
        dtype: str = "float32",
        max_batch: int = 64,
        devices: Sequence[Any] | None = None,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.config = config
        self.max_batch = max_batch
        self._devices = list(devices) if devices else [jax.local_devices()[0]]
        mesh = Mesh(np.array(self._devices), ("batch",))
        self._batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
        # Unrolled ViT blocks (`vit/blocks_{i}`): see EvaViT.
        params = {**params, "vit": match_layers(params["vit"], False, config.vit_depth, "blocks")}
        self.params = jax.device_put(
            jax.tree_util.tree_map(np.asarray, params), NamedSharding(mesh, PartitionSpec())
        )
        module = SeedTokenizerModel(
            config, DTYPES[dtype], PRECISIONS[precision], scan_blocks=False
        )
        self._encode = jax.jit(lambda p, x: module.apply({"params": p}, x))
        self._embed = jax.jit(
            lambda p, ids: module.apply({"params": p}, ids, method=SeedTokenizerModel.embed)
        )
        self._pipelines: dict[Any, Any] = {}

    @classmethod
    def load(cls, directory: str, **kwargs) -> ImageTokenizer:
        """Loads a directory written by `python -m converters.seed`."""
        config, params = load_seed(directory)
        return cls(config, params, **kwargs)

    @property
    def num_codes(self) -> int:
        """Codes per image (32)."""
        return self.config.num_queries

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def n_q(self) -> int:
        """Codebooks per code position: one (the registry's common tokenizer interface)."""
        return 1

    def read(self, path: str) -> Any:
        """The image of a local or gs:// file, as `encode_arrays` takes it; errors name it."""
        return load_image(path, name=path)

    def encode_arrays(self, images: Sequence[Any], n_q: int | None = None) -> list[np.ndarray]:
        """Images -> int32 codes (1, 32) each: `encode` in the registry's common interface."""
        if n_q not in (None, 1):
            raise ValueError(f"SEED has one codebook; n_q={n_q}")
        return [c[None] for c in self.encode(list(images))]

    def encode(self, images: Sequence[Any]) -> np.ndarray:
        """Images (paths, PIL images or uint8/float arrays, any size/mode) -> int32 (batch, 32)."""
        if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "mode"):
            images = [images]  # one image given bare
        if len(images) == 0:
            raise ValueError("encode: no images given")
        return self.encode_pixels(preprocess(list(images), self.config.image_size))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed float32 (batch, 224, 224, 3) pixels -> int32 codes (batch, 32)."""
        return self._run_encode(pixels)[0]

    def encode_vectors(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed pixels -> (codes, pre-quantization vectors (batch, 32, code_dim))."""
        return self._run_encode(pixels)

    def embed(self, codes: Any) -> np.ndarray:
        """Codes (batch, 32) or (32,) -> float32 (batch, embed_dim) unCLIP image embeddings."""
        codes = self._check_codes(codes)
        outs = []
        for start in range(0, len(codes), self.max_batch):
            chunk = codes[start : start + self.max_batch]
            padded = self._place(_pad(chunk, self._bucket(len(chunk))))
            outs.append(np.asarray(self._embed(self.params, padded))[: len(chunk)])
        return np.concatenate(outs)

    def render(
        self,
        codes: Any,
        seed: int | Sequence[int] = 0,
        *,
        pipeline: Any = None,
        guidance_scale: float = 10.0,
        num_inference_steps: int = 20,
        noise_level: int = 0,
        device: str | None = None,
    ) -> list:
        """Codes -> PIL images through diffusers' StableUnCLIPImg2ImgPipeline (PyTorch).

        `pipeline`: a loaded pipeline, or a local directory / hub name for `from_pretrained`
        (default SD 2.1 unCLIP). Image i uses `seed[i]` (or `seed + i`), so it does not depend
        on the rest of the batch. Defaults are SEED's: noise level 0, guidance 10, 20 steps.
        """
        try:
            import torch
            from diffusers import StableUnCLIPImg2ImgPipeline
        except ImportError as e:
            raise ImportError(f"{RENDER_REQUIREMENT} ({e})") from e
        pipe = self._pipeline(pipeline, StableUnCLIPImg2ImgPipeline)
        embeds = self.embed(codes)
        seeds = (
            [int(seed) + i for i in range(len(embeds))]
            if isinstance(seed, (int, np.integer))
            else [int(s) for s in seed]
        )
        if len(seeds) != len(embeds):
            raise ValueError(f"render: {len(embeds)} images but {len(seeds)} seeds")
        device = device or str(getattr(pipe, "device", "cpu"))
        images = []
        for emb, s in zip(embeds, seeds, strict=True):
            generator = torch.Generator(device=device).manual_seed(s)
            out = pipe(
                image_embeds=torch.from_numpy(emb[None]).to(device, pipe.unet.dtype),
                prompt="",
                noise_level=noise_level,
                guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps,
                generator=generator,
                output_type="pil",
            )
            images.extend(out.images)
        return images

    def _pipeline(self, pipeline: Any, cls: Any) -> Any:
        if pipeline is not None and not isinstance(pipeline, (str, os.PathLike)):
            return pipeline
        name = os.fspath(pipeline) if pipeline is not None else UNCLIP_PIPELINE
        if name not in self._pipelines:
            self._pipelines[name] = cls.from_pretrained(name)
        return self._pipelines[name]

    def _run_encode(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.asarray(pixels)
        size = self.config.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(
                f"pixels: expected (batch, {size}, {size}, 3) preprocessed images, "
                f"got shape {pixels.shape}"
            )
        if not np.issubdtype(pixels.dtype, np.floating):
            raise ValueError(f"pixels: expected float (CLIP-normalized), got dtype {pixels.dtype}")
        codes, vectors = [], []
        for start in range(0, len(pixels), self.max_batch):
            chunk = pixels[start : start + self.max_batch].astype(np.float32)
            padded = self._place(_pad(chunk, self._bucket(len(chunk))))
            c, z = self._encode(self.params, padded)
            codes.append(np.asarray(c)[: len(chunk)])
            vectors.append(np.asarray(z)[: len(chunk)])
        return np.concatenate(codes), np.concatenate(vectors)

    def _bucket(self, n: int) -> int:
        return _bucket(n, self.max_batch, len(self._devices))

    def _place(self, batch: np.ndarray) -> jax.Array:
        return jax.device_put(batch, self._batch_sharding)

    def _check_codes(self, codes: Any) -> np.ndarray:
        arr = np.asarray(codes)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != self.num_codes or arr.shape[0] == 0:
            raise ValueError(
                f"codes: expected shape (batch, {self.num_codes}), got {np.asarray(codes).shape}"
            )
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"codes: expected integers, got dtype {arr.dtype}")
        bad = arr[(arr < 0) | (arr >= self.codebook_size)]
        if bad.size:
            raise ValueError(f"codes: code {int(bad[0])} outside 0..{self.codebook_size - 1}")
        return arr.astype(np.int32)


def _pad(batch: np.ndarray, size: int) -> np.ndarray:
    if len(batch) == size:
        return batch
    pad = np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)
    return np.concatenate([batch, pad])


def image_ids(codes: Any, vocab) -> np.ndarray:
    """SEED codes (32,) or (batch, 32) -> merged-vocabulary ids of the same shape."""
    arr = np.asarray(codes)
    mod = vocab.modality(MODALITY)
    return np.stack([mod.codes_to_ids(row) for row in arr.reshape(-1, arr.shape[-1])]).reshape(
        arr.shape
    )


def image_codes_from_ids(ids: Any, vocab) -> np.ndarray:
    """Merged-vocabulary image ids -> SEED codes; other ids are refused."""
    return vocab.modality(MODALITY).ids_to_codes(ids)
