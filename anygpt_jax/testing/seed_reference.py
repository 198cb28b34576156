"""A PyTorch assembly of SEED tokenizer v2 from reference parts, for parity tests and benchmarks.

timm's EVA (the ViT), transformers' Blip2QFormerModel with a causal mask among the queries,
and plain torch layers for the projections, the VQ and the decode head, all under SEED's
attribute names so that `seed_state_dict()` is a seed_quantizer.pt-style state dict.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from functools import partial

import numpy as np
import torch
from torch import nn


def import_timm_eva():
    """timm's EVA module, imported without torchvision.

    timm imports torchvision at import time (for classes EVA never uses), and PyPI has no
    torchvision for this CPU torch. A permissive stand-in serves only during the import and is
    removed afterwards, so transformers' own torchvision checks still see it absent.
    """
    if "timm.models.eva" in sys.modules:
        return sys.modules["timm.models.eva"]

    class _Anything(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            sub = _Anything(name, (), {})  # distinct per name: timm keys dicts by these
            setattr(cls, name, sub)
            return sub

    class Stub(metaclass=_Anything):
        pass

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            module = types.ModuleType(spec.name)
            module.__path__ = []
            module.__getattr__ = lambda attr: getattr(Stub, attr)
            return module

        def exec_module(self, module):
            pass

    finder = Finder()
    sys.meta_path.insert(0, finder)
    try:
        import timm.models.eva as eva
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    return eva


class ReferenceSeed(nn.Module):
    """SEED tokenizer v2 from reference parts (sizes from a SeedConfig)."""

    def __init__(self, c):
        super().__init__()
        import transformers

        eva = import_timm_eva()  # first: it makes timm importable
        from timm.models.vision_transformer import Block as TimmBlock

        self.config = c
        self.visual_encoder = eva.Eva(
            img_size=c.image_size,
            patch_size=c.patch_size,
            embed_dim=c.vit_width,
            depth=c.vit_depth,
            num_heads=c.vit_heads,
            mlp_ratio=c.vit_mlp / c.vit_width,
            qkv_bias=True,
            num_classes=0,
            norm_layer=partial(nn.LayerNorm, eps=c.vit_eps),
        )
        self.ln_vision = nn.LayerNorm(c.vit_width, eps=c.ln_vision_eps)
        qconfig = transformers.Blip2QFormerConfig(
            hidden_size=c.qformer_width,
            num_hidden_layers=c.qformer_depth,
            num_attention_heads=c.qformer_heads,
            intermediate_size=c.qformer_mlp,
            encoder_hidden_size=c.vit_width,
            cross_attention_frequency=c.cross_attention_freq,
            layer_norm_eps=c.qformer_eps,
            hidden_act="gelu",
        )
        self.qformer = transformers.Blip2QFormerModel(qconfig).eval()
        self.query_tokens = nn.Parameter(0.02 * torch.randn(1, c.num_queries, c.qformer_width))
        self.encode_task_layer = nn.Sequential(
            nn.Linear(c.qformer_width, c.qformer_width),
            nn.Tanh(),
            nn.Linear(c.qformer_width, c.code_dim),
        )
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(c.codebook_size, c.code_dim)
        self.decode_task_layer = nn.Sequential(
            nn.Linear(c.code_dim, c.code_dim), nn.Tanh(), nn.Linear(c.code_dim, c.qformer_width)
        )
        self.pos_embed_image = nn.Parameter(0.02 * torch.randn(1, c.num_queries, c.qformer_width))
        self.blocks_image = nn.ModuleList(
            [
                TimmBlock(
                    c.qformer_width,
                    c.decoder_heads,
                    mlp_ratio=c.decoder_mlp / c.qformer_width,
                    qkv_bias=True,
                    norm_layer=partial(nn.LayerNorm, eps=c.decoder_eps),
                )
                for _ in range(c.decoder_depth)
            ]
        )
        downs, dims = [], (c.qformer_width, *c.down_dims)
        for i in range(len(c.down_dims)):
            downs += ([nn.ReLU()] if i else []) + [nn.Linear(dims[i], dims[i + 1], bias=False)]
        self.image_down = nn.Sequential(*downs)
        self.distill_image_proj = nn.Linear(c.num_queries * c.down_dims[-1], c.embed_dim)
        self.eval()

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """NCHW pixels -> ln_vision(ViT) features."""
        return self.ln_vision(self.visual_encoder.forward_features(pixels))

    def qformer_states(self, features: torch.Tensor) -> torch.Tensor:
        n, b = self.config.num_queries, features.shape[0]
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None].expand(b, 1, n, n)
        return self.qformer(
            query_embeds=self.query_tokens.expand(b, -1, -1),
            attention_mask=causal if self.config.causal else None,
            encoder_hidden_states=features,
        ).last_hidden_state

    def vectors(self, pixels: torch.Tensor) -> torch.Tensor:
        """NCHW pixels -> pre-quantization vectors (batch, queries, code_dim)."""
        return self.encode_task_layer(self.qformer_states(self.image_features(pixels)))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """NCHW pixels -> codes (batch, queries): SEED's |z|^2 + |e|^2 - 2 z.e argmin."""
        z = self.vectors(pixels)
        flat = z.reshape(-1, z.shape[-1])
        e = self.quantize.embedding.weight
        d = (flat**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * flat @ e.T
        return d.argmin(1).reshape(z.shape[:2])

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (batch, queries) -> unCLIP image embeddings, as SEED's get_codebook_entry."""
        x = self.decode_task_layer(self.quantize.embedding(codes)) + self.pos_embed_image
        for block in self.blocks_image:
            x = block(x)
        x = self.image_down(x)
        return self.distill_image_proj(x.reshape(x.shape[0], -1))


# transformers' Blip2QFormerModel names -> SEED's (LAVIS BertModel under Qformer.bert).
_QFORMER_RENAMES = (
    ("layernorm.", "Qformer.bert.embeddings.LayerNorm."),
    ("encoder.layer.", "Qformer.bert.encoder.layer."),
    (".attention.attention.", ".attention.self."),
    (".crossattention.attention.", ".crossattention.self."),
)


def seed_state_dict(ref: ReferenceSeed, with_vit: bool = True, extras: bool = True) -> dict:
    """The reference's weights under seed_quantizer.pt's key names.

    extras: add tensors a real checkpoint carries that inference ignores (recon_s branch,
    Q-Former text FFN and position ids).
    """
    out = {}
    for key, value in ref.state_dict().items():
        if key.startswith("visual_encoder."):
            if not with_vit or key.startswith("visual_encoder.fc_norm."):
                continue
        elif key.startswith("qformer."):
            key = key[len("qformer.") :]
            for old, new in _QFORMER_RENAMES:
                key = key.replace(old, new)
        out[key] = value.detach()
    if extras:
        w = ref.config.qformer_width
        out["pos_embed"] = torch.zeros(1, ref.config.num_queries, w)
        out["blocks.0.norm1.weight"] = torch.ones(w)
        out["Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
        out["Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(
            ref.config.qformer_mlp, w
        )
    return out


def vit_state_dict(ref: ReferenceSeed, extra_blocks: int = 1) -> dict:
    """The ViT alone, as LAVIS's eva_vit_g.pth (no prefix; EVA-CLIP-g has one block more)."""
    sd = {
        k[len("visual_encoder.") :]: v.detach().clone()
        for k, v in ref.state_dict().items()
        if k.startswith("visual_encoder.") and not k.startswith("visual_encoder.fc_norm.")
    }
    depth = ref.config.vit_depth
    for extra in range(depth, depth + extra_blocks):
        for k in [k for k in sd if k.startswith("blocks.0.")]:
            sd[k.replace("blocks.0.", f"blocks.{extra}.", 1)] = torch.randn_like(sd[k])
    return sd


def randomize(ref: ReferenceSeed, seed: int = 0) -> None:
    """Non-trivial weights everywhere. BERT/timm initialize Linear weights with std 0.02, which
    leaves a tiny model's queries almost blind to the image; use 1/sqrt(fan_in) instead, and
    random LayerNorm scales/biases and position/query embeddings."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            lname = name.lower()
            if "norm" in lname:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("weight") and p.ndim >= 2 and "quantize" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            elif name.endswith("bias"):  # includes EVA's q_bias / v_bias
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name in ("pos_embed_image", "query_tokens") or name.endswith(
                ("pos_embed", "cls_token")
            ):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def fill_codebook(
    ref: ReferenceSeed, pixels: torch.Tensor, noise: float = 0.05, seed: int = 0
) -> None:
    """Codebook rows from real pre-quantization vectors plus a little noise (random rows would
    all lose to one or two entries, and a test with one code proves nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = ref.vectors(pixels).reshape(-1, ref.config.code_dim)
        pick = torch.randint(0, z.shape[0], (ref.config.codebook_size,), generator=gen)
        rows = z[pick] + noise * z.std() * torch.randn(
            ref.config.codebook_size, ref.config.code_dim, generator=gen
        )
        ref.quantize.embedding.weight.copy_(rows)


def to_nchw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
