"""The merged vocabulary (text + image + speech + music tokens) and the modality registry.

Every id offset of the project lives here: other modules ask a MergedVocabulary.
"""

from anygpt_jax.vocab.files import AddedToken, TokenizerFiles, read_tokenizer_dir
from anygpt_jax.vocab.layout import (
    AUDIO,
    IMAGE,
    KNOWN_MODALITIES,
    MUSIC,
    SFT_MARKERS,
    SPEECH,
    TEXT_MARKERS,
    Layout,
    MarkerBlock,
    ModalitySpec,
    anygpt_base_layout,
    anygpt_layout,
)
from anygpt_jax.vocab.merged import MergedVocabulary, merged_vocabulary
from anygpt_jax.vocab.registry import Modality, ModalitySpan, Segment

__all__ = [
    "AUDIO",
    "IMAGE",
    "KNOWN_MODALITIES",
    "MUSIC",
    "SFT_MARKERS",
    "SPEECH",
    "TEXT_MARKERS",
    "AddedToken",
    "Layout",
    "MarkerBlock",
    "MergedVocabulary",
    "Modality",
    "ModalitySpan",
    "ModalitySpec",
    "Segment",
    "TokenizerFiles",
    "anygpt_base_layout",
    "anygpt_layout",
    "merged_vocabulary",
    "read_tokenizer_dir",
]
