"""PyTorch references for the SoundStorm tests and benchmark.

`build_reference(config)` assembles AnyGPT's SoundStorm network from soundstorm-pytorch's
modules (its conformer block, rotary attention and convolution module are the fork's; its
newer hyper-connection streams are switched off and its value-residual mixing left out, which
the fork does not have), under the fork's attribute names, so `anygpt_state_dict()` is a
speechtokenizer_soundstorm_mls.pt-style state dict. `fork_generate()` restates, in torch, the
decoding loop AnyGPT calls (soundstorm_speechtokenizer's SoundStorm.generate).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from anygpt_jax.modalities.soundstorm_model import SoundStormConfig
from anygpt_jax.testing.references import import_soundstorm


def reference_module():
    """soundstorm_pytorch.soundstorm (model code only)."""
    return import_soundstorm()


def _block_kwargs(cfg: SoundStormConfig) -> dict:
    return dict(dim=cfg.dim, dim_head=cfg.dim_head, heads=cfg.heads, ff_mult=cfg.ff_mult,
                conv_expansion_factor=cfg.conv_expansion, conv_kernel_size=cfg.conv_kernel,
                attn_flash=False, num_residual_streams=1, has_value_residual_mix=False)


def reference_block(cfg: SoundStormConfig) -> nn.Module:
    """One conformer block as the fork has it (plain residuals, no value mixing)."""
    return reference_module().ConformerBlock(**_block_kwargs(cfg)).eval()


def build_reference(cfg: SoundStormConfig, seed: int = 0) -> nn.Module:
    """AnyGPT's SoundStorm network with random weights (non-trivial norms and biases)."""
    ss = reference_module()

    class ForkConformer(ss.Conformer):
        """The fork's conformer: blocks with plain residuals and no value-residual mixing."""

        def __init__(self):
            super().__init__(cfg.dim, depth=1, dim_head=cfg.dim_head, heads=cfg.heads,
                             attn_flash=False, num_residual_streams=1)
            self.layers = nn.ModuleList(reference_block(cfg) for _ in range(cfg.depth))

        def forward(self, x, mask=None):
            rotary = self.rotary_emb(x.shape[-2])
            for block in self.layers:
                x = block(x, mask=mask, rotary_emb=rotary)
            return x

    class ForkSoundStorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = ss.ConformerWrapper(codebook_size=cfg.codebook_size,
                                           num_quantizers=cfg.num_quantizers,
                                           conformer=ForkConformer())
            self.semantic_token_emb = nn.Embedding(cfg.num_semantic, cfg.dim)
            self.num_quantizers, self.codebook_size = cfg.num_quantizers, cfg.codebook_size

    torch.manual_seed(seed)
    model = ForkSoundStorm().eval()
    randomize(model, seed)
    return model


def randomize(model: nn.Module, seed: int) -> None:
    """Non-default norms and biases, so a missed or transposed one shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)

    def rand(p, scale, offset=0.0):
        p.copy_(offset + scale * torch.randn(p.shape, generator=gen))

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                rand(module.weight, 0.2, 1.0)
            elif type(module).__name__ == "ChanLayerNorm":
                rand(module.gamma, 0.2, 1.0)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                rand(p, 0.1)


def anygpt_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under the fork's names (soundstorm-pytorch's residual wrapper dropped)."""
    return {k.replace(".branch.", "."): v.clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def reference_logits(model: nn.Module, codes: np.ndarray, semantic: np.ndarray,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """Codes (B, T, Q), semantic (B, T) -> logits (B, T, Q, L) from the torch network."""
    b, t, q = codes.shape
    x = torch.from_numpy(codes.astype(np.int64)).reshape(b, t * q)
    mask = None if valid is None else torch.from_numpy(valid)
    cond = model.semantic_token_emb(torch.from_numpy(semantic.astype(np.int64)))
    return model.net(x, mask=mask, cond=cond).reshape(b, t, q, -1).numpy()


@torch.no_grad()
def fork_generate(model: nn.Module, semantic: torch.Tensor, prompt: torch.Tensor | None = None,
                  steps: int = 3, greedy: bool = True, thres: float = 0.7,
                  full_levels: int = 1, noise: bool = True) -> torch.Tensor:
    """The fork's SoundStorm.generate, restated: semantic (B, N), prompt (B, P, 1 + Q) or
    None -> codes (B, N, 1 + Q). `noise=False` leaves out the Gumbel noise (argmax picks)."""
    batch, n = semantic.shape
    num_q, mask_id = model.num_quantizers, model.codebook_size
    codes = torch.full((batch, n, num_q), mask_id, dtype=torch.long)
    todo = torch.ones((batch, n, num_q), dtype=torch.bool)
    ids = semantic.long()
    if prompt is not None:
        ids = torch.cat([prompt[:, :, 0].long(), ids], dim=1)
        codes = torch.cat([prompt[:, :, 1:].long(), codes], dim=1)
        todo = torch.cat([torch.zeros_like(prompt[:, :, 1:], dtype=torch.bool), todo], dim=1)
    region = todo.clone()
    total = ids.shape[1]
    cond = model.semantic_token_emb(ids)
    seq_mask = torch.ones((batch, total), dtype=torch.bool)
    fraction = torch.cos(torch.linspace(0.0, 1.0, steps + 1) * math.pi / 2)
    counts = (fraction[:, None] * seq_mask.sum(-1)[None]).long()  # (steps + 1, B)
    for q in range(num_q):
        schedule = counts if q < full_levels else torch.zeros((1, batch), dtype=torch.long)
        for i, count in enumerate(schedule):
            logits = model.net(codes.reshape(batch, total * num_q), mask=seq_mask, cond=cond)
            if greedy and (q >= full_levels or bool((count == 0).all())):
                picked = logits.argmax(-1)
            else:
                k = math.ceil((1 - thres) * logits.shape[-1])
                vals, idx = logits.topk(k, dim=-1)
                logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, vals)
                scaled = logits / max(i / steps, 1e-10)
                if noise:
                    u = torch.rand_like(scaled)
                    scaled = scaled - torch.log(-torch.log(u + 1e-10) + 1e-10)
                picked = scaled.argmax(-1)
            picked = picked.reshape(batch, total, num_q)
            if q >= full_levels:  # one pass: layers q.. everywhere, prompt frames included
                codes[:, :, q:] = picked[:, :, q:]
                todo[:, :, q] = False
                continue
            codes = torch.where(todo, picked, codes)
            if bool((count == 0).all()):
                continue
            prob = logits.softmax(-1).gather(-1, picked.reshape(batch, -1, 1))[..., 0]
            rank = (1 - prob).argsort(-1, descending=True).argsort(-1)
            todo = (rank < count[:, None]).reshape(batch, total, num_q)
            todo[:, :, q + 1:] = True
            todo &= region
            codes = codes.masked_fill(todo, mask_id)
    return torch.cat([semantic.long()[:, :, None], codes[:, -n:]], dim=-1)
