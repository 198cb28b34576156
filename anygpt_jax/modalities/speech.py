"""SpeechTokenizer in JAX: 16 kHz speech <-> 8 RVQ layers x 1024 codes at 50 frames/s.

    tok = SpeechTokenizer.load(DIR)           # DIR from `python -m converters.speechtokenizer`
    codes = tok.encode(wav, sample_rate)      # int32 (n_q, frames); any rate, mono or stereo
    wav16k = tok.decode(codes)                # float32 (frames * 320,)

AnyGPT's LLM sees RVQ layer 1 only: `units()` gives those codes and `speech_ids` /
`speech_units_from_ids` map them to and from the merged vocabulary (anygpt_jax.vocab). Layers
2-8, needed for a good reconstruction, come from SoundStorm at generation time.
"""

from __future__ import annotations

import numpy as np

from anygpt_jax.modalities.codec import AudioCodec

MODALITY = "speech"


class SpeechTokenizer(AudioCodec):
    """SpeechTokenizer (SEANet encoder with BiLSTM, RVQ, SEANet decoder) on numpy audio."""

    kind = "speechtokenizer"

    def units(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """RVQ layer-1 codes (frames,): what AnyGPT feeds its LLM for speech."""
        return self.encode(waveform, sample_rate, n_q=1)[0]


def speech_ids(codes: np.ndarray, vocab) -> np.ndarray:
    """Codes (n_q, frames) or layer-1 units (frames,) -> merged-vocabulary ids (frames,)."""
    codes = np.asarray(codes)
    units = codes[0] if codes.ndim == 2 else codes
    return vocab.modality(MODALITY).codes_to_ids(units)


def speech_units_from_ids(ids: np.ndarray, vocab) -> np.ndarray:
    """Merged-vocabulary speech ids -> layer-1 units (frames,); other ids are refused."""
    return vocab.modality(MODALITY).ids_to_codes(ids)
