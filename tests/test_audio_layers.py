"""Each SEANet layer kind against the PyTorch reference: reflect padding, transposed-conv
trimming, weight-norm folding, LSTM and BiLSTM, residual VQ; padded batches vs items alone.

Also home of the helpers the codec tests share (`reference_speechtokenizer`, code comparison
with near-ties, codebook filling).
"""

import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from anygpt_jax.modalities import audio_layers as al
from anygpt_jax.testing.references import import_speechtokenizer
from converters.common import fold_weight_norm, torch_to_numpy
from converters.encodec import TorchTensors, conv_params, lstm_params

torch.set_float32_matmul_precision("highest")
# The reference uses torch's deprecated weight_norm and torch.jit.script; both still work.
pytestmark = [pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated"),
              pytest.mark.filterwarnings("ignore:.*torch.jit.script.*is deprecated")]


def reference_speechtokenizer():
    """The reference package; fails (never skips) with the pip line when it is missing."""
    return import_speechtokenizer()


def fill_codebooks(codebooks, latents: torch.Tensor, noise: float = 0.01, seed: int = 0):
    """Fills each RVQ layer's codebook from frames of the residual it sees, plus noise.

    `codebooks`: the reference's codebook modules (with `embed`, `encode`, `decode`);
    `latents`: (frames, dim). Random or zero codebooks would map every frame to one code.
    """
    gen = torch.Generator().manual_seed(seed)
    residual = latents
    with torch.no_grad():
        for cb in codebooks:
            size = cb.embed.shape[0]
            idx = torch.randint(0, residual.shape[0], (size,), generator=gen)
            picked = residual[idx]
            cb.embed.copy_(picked + noise * picked.std() * torch.randn(picked.shape, generator=gen))
            residual = residual - cb.decode(cb.encode(residual))


def assert_codes_match(ours, ref, latents, codebooks, rtol: float = 1e-4) -> None:
    """Codes (n_q, frames) equal, except where the reference's best and our pick are a near-tie.

    At such a frame the residual of later layers differs, so later layers are not compared.
    `latents` (frames, dim) and `codebooks` (n_q, size, dim) are the reference's, in numpy.
    """
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    residual = np.asarray(latents, np.float64)
    alive = np.ones(ref.shape[1], bool)
    for q in range(ref.shape[0]):
        cb = np.asarray(codebooks[q], np.float64)
        for t in np.flatnonzero(alive & (ours[q] != ref[q])):
            d = ((residual[t] - cb[[ours[q, t], ref[q, t]]]) ** 2).sum(-1)
            scale = (residual[t] ** 2).sum() + (cb[ref[q, t]] ** 2).sum()
            assert abs(d[0] - d[1]) <= rtol * scale, (
                f"layer {q} frame {t}: ours {ours[q, t]} ref {ref[q, t]}, distances {d}")
            alive[t] = False
        residual = residual - cb[ref[q]]
    assert alive.mean() > 0.9, f"too many near-ties: {np.sum(~alive)} of {alive.size} frames"


@pytest.fixture(scope="module")
def st():
    return reference_speechtokenizer()


def _apply(module, params, x, lengths=None):
    """Runs one flax layer on (batch, channels, time) torch input; returns (batch, ch, time)."""
    x = jnp.asarray(x.detach().numpy().transpose(0, 2, 1))
    lengths = None if lengths is None else jnp.asarray(lengths)
    y, _ = jax.jit(module.apply)({"params": params}, x, lengths)
    return np.asarray(y).transpose(0, 2, 1)


def _padded_batch(items):
    """Items (1, C, T_i) -> zero-padded (B, C, T_max) and lengths."""
    lengths = np.array([x.shape[-1] for x in items], np.int32)
    batch = torch.zeros(len(items), items[0].shape[1], int(lengths.max()))
    for b, x in enumerate(items):
        batch[b, :, : x.shape[-1]] = x[0]
    return batch, lengths


def _randomize(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


CONV_CASES = [  # kernel, stride, dilation, causal, length
    (7, 1, 1, False, 50),
    (3, 1, 2, False, 9),  # dilated
    (4, 2, 1, False, 31),  # odd length: extra right padding
    (10, 5, 1, False, 3),  # input shorter than the padding: zero extension before reflect
    (7, 1, 1, False, 2),
    (16, 8, 1, True, 21),  # causal: all padding left
]


@pytest.mark.parametrize("k,s,d,causal,length", CONV_CASES)
def test_conv_reflect_padding(st, k, s, d, causal, length):
    ref = _randomize(st.modules.SConv1d(3, 5, k, s, d, causal=causal, norm="weight_norm"), k)
    params = conv_params(TorchTensors.from_state_dict(ref.state_dict()), "conv.conv", False)
    ours = al.SConv1d(5, k, s, d, causal=causal)
    x = torch.randn(2, 3, length)
    with torch.no_grad():
        want = ref(x).numpy()
    np.testing.assert_allclose(_apply(ours, params, x), want, atol=1e-5, rtol=1e-5)
    # A padded batch with per-item lengths gives each item what it gets alone.
    items = [torch.randn(1, 3, n) for n in (length, max(1, length - 3), length + 5)]
    batch, lengths = _padded_batch(items)
    got = _apply(ours, params, batch, lengths)
    for b, item in enumerate(items):
        with torch.no_grad():
            alone = ref(item).numpy()[0]
        np.testing.assert_allclose(got[b, :, : alone.shape[-1]], alone, atol=1e-5, rtol=1e-5)


def test_conv_zero_padding_matches_encodec():
    from transformers import EncodecConfig
    from transformers.models.encodec.modeling_encodec import EncodecConv1d

    config = EncodecConfig(pad_mode="constant", use_causal_conv=False)
    ref = _randomize(EncodecConv1d(config, 3, 4, kernel_size=5, stride=2), 1)
    params = conv_params(TorchTensors.from_state_dict(ref.state_dict()), "conv", False)
    ours = al.SConv1d(4, 5, 2, pad_mode="constant")
    x = torch.randn(2, 3, 17)
    with torch.no_grad():
        want = ref(x).numpy()
    np.testing.assert_allclose(_apply(ours, params, x), want, atol=1e-5, rtol=1e-5)
    batch, lengths = _padded_batch([x[:1], x[1:, :, :11]])
    got = _apply(ours, params, batch, lengths)
    with torch.no_grad():
        alone = ref(x[1:, :, :11]).numpy()[0]
    np.testing.assert_allclose(got[1, :, : alone.shape[-1]], alone, atol=1e-5, rtol=1e-5)


CONVTR_CASES = [  # kernel, stride, causal, trim_right_ratio
    (4, 2, False, 1.0),
    (10, 5, False, 1.0),  # odd trim: one more sample off the left
    (16, 8, True, 1.0),
    (6, 4, False, 1.0),  # kernel not a multiple of the stride: the dilated-conv path
    (6, 2, True, 0.5),
]


@pytest.mark.parametrize("k,s,causal,ratio", CONVTR_CASES)
def test_conv_transpose_trimming(st, k, s, causal, ratio):
    ref = _randomize(st.modules.SConvTranspose1d(4, 3, k, s, causal=causal, norm="weight_norm",
                                                 trim_right_ratio=ratio), k)
    params = conv_params(TorchTensors.from_state_dict(ref.state_dict()), "convtr.convtr", True)
    ours = al.SConvTranspose1d(3, k, s, causal=causal, trim_right_ratio=ratio)
    x = torch.randn(2, 4, 9)
    with torch.no_grad():
        want = ref(x).numpy()
    np.testing.assert_allclose(_apply(ours, params, x), want, atol=1e-5, rtol=1e-5)
    items = [x[:1], x[1:, :, :5]]
    batch, lengths = _padded_batch(items)
    got = _apply(ours, params, batch, lengths)
    with torch.no_grad():
        alone = ref(items[1]).numpy()[0]
    assert alone.shape[-1] == 5 * s
    np.testing.assert_allclose(got[1, :, : 5 * s], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("api", ["weight_g", "parametrizations"])
def test_weight_norm_folding(transposed, api):
    torch.manual_seed(0)
    conv = (torch.nn.ConvTranspose1d if transposed else torch.nn.Conv1d)(6, 4, 5)
    if api == "weight_g":
        conv = torch.nn.utils.weight_norm(conv)
        g, v = conv.weight_g, conv.weight_v
    else:
        conv = torch.nn.utils.parametrizations.weight_norm(conv)
        g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
    with torch.no_grad():
        g.mul_(torch.rand_like(g) + 0.5)  # g no longer equals ||v||
        want = (conv.weight if api == "parametrizations" else torch._weight_norm(v, g, 0))
    folded = fold_weight_norm(torch_to_numpy(g.detach()), torch_to_numpy(v.detach()))
    np.testing.assert_allclose(folded, want.detach().numpy(), atol=1e-6, rtol=1e-6)
    # Through the converter's key lookup too, in our (k, in, out) layout.
    holder = torch.nn.Module()
    holder.conv = conv
    kernel = conv_params(TorchTensors.from_state_dict(holder.state_dict()), "conv", transposed)
    order = (2, 0, 1) if transposed else (2, 1, 0)
    np.testing.assert_allclose(kernel["kernel"], want.detach().numpy().transpose(order),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm(st, bidirectional):
    ref = _randomize(st.modules.SLSTM(6, num_layers=2, bidirectional=bidirectional), 3)
    params = lstm_params(TorchTensors.from_state_dict(ref.state_dict()), "lstm", 2, bidirectional)
    ours = al.LSTM(6, 2, bidirectional)
    x = torch.randn(2, 6, 13)
    with torch.no_grad():
        want = ref(x).numpy()
    np.testing.assert_allclose(_apply(ours, params, x), want, atol=1e-5, rtol=1e-5)
    # The backward direction must start at each item's own end.
    items = [x[:1], x[1:, :, :7]]
    batch, lengths = _padded_batch(items)
    got = _apply(ours, params, batch, lengths)
    with torch.no_grad():
        alone = ref(items[1]).numpy()[0]
    np.testing.assert_allclose(got[1, :, :7], alone, atol=1e-5, rtol=1e-5)


def test_rvq(st):
    from speechtokenizer.quantization.core_vq import ResidualVectorQuantization

    torch.manual_seed(0)
    rvq = ResidualVectorQuantization(num_quantizers=3, dim=8, codebook_size=64,
                                     kmeans_init=False).eval()
    latents = torch.randn(2, 8, 40) * 3  # (batch, dim, frames) as the reference takes it
    fill_codebooks([layer._codebook for layer in rvq.layers],
                   latents.permute(0, 2, 1).reshape(-1, 8))
    codebooks = np.stack([torch_to_numpy(layer._codebook.embed) for layer in rvq.layers])
    with torch.no_grad():
        ref_codes = rvq.encode(latents).numpy()  # (n_q, batch, frames)
        ref_quant = rvq.decode(torch.from_numpy(ref_codes)).numpy()
    x = jnp.asarray(latents.numpy().transpose(0, 2, 1))
    codes = np.asarray(al.rvq_encode(x, jnp.asarray(codebooks), al.lax.Precision.HIGHEST))
    assert len(np.unique(ref_codes[0])) > 30, "codebooks too degenerate to test anything"
    for b in range(2):
        assert_codes_match(codes[:, b], ref_codes[:, b], x[b], codebooks)
    quant = np.asarray(al.rvq_decode(jnp.asarray(ref_codes), jnp.asarray(codebooks)))
    np.testing.assert_allclose(quant, ref_quant.transpose(0, 2, 1), atol=1e-5, rtol=1e-5)


def test_rvq_exact_tie_takes_first_index():
    codebooks = jnp.asarray([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # codes 0 and 2 equal
    x = jnp.asarray([[[2.0, 0.0], [0.5, 0.5]]])  # second frame: codes 0, 1, 2 all tie
    codes = np.asarray(al.rvq_encode(x, codebooks, al.lax.Precision.HIGHEST))
    np.testing.assert_array_equal(codes, [[[0, 0]]])
