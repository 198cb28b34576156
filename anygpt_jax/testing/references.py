"""Imports of the PyTorch reference packages, model code only.

The tests and benchmarks check our ports against these packages. Their package
`__init__`s import training stacks (torchaudio, accelerate, audiolm-pytorch, ...) that the
model classes never use; stand-in modules satisfy those imports and are removed again right
after, so nothing else sees them.
"""

from __future__ import annotations

import sys
import types

SPEECHTOKENIZER_REQUIREMENT = (
    "speechtokenizer==1.0.1 (pip install --no-deps speechtokenizer==1.0.1)"
)
SOUNDSTORM_REQUIREMENT = ("soundstorm-pytorch==0.6.1 with beartype and hyper-connections "
                          "(pip install --no-deps soundstorm-pytorch==0.6.1 beartype "
                          "hyper-connections==0.1.15)")


def import_speechtokenizer() -> types.ModuleType:
    """Imports the reference `speechtokenizer` package (model only) or says how to install it."""
    trainer = "speechtokenizer.trainer"
    had = trainer in sys.modules
    if not had:
        # The package's __init__ imports its trainer (torchaudio, accelerate, tensorboard, ...);
        # a stand-in satisfies that import and is removed again right after.
        stub = types.ModuleType(trainer)
        stub.SpeechTokenizerTrainer = None
        sys.modules[trainer] = stub
    try:
        import speechtokenizer
    except ImportError as e:
        raise ImportError(f"the reference SpeechTokenizer is not installed: "
                          f"{SPEECHTOKENIZER_REQUIREMENT} ({e})") from e
    finally:
        if not had:
            sys.modules.pop(trainer, None)
    return speechtokenizer


def import_soundstorm() -> types.ModuleType:
    """Imports `soundstorm_pytorch.soundstorm` (model code only) or says how to install it."""
    # The package imports audiolm-pytorch (which needs torchaudio), spear-tts-pytorch and its
    # trainer (accelerate) for names the model classes never use: stand-ins satisfy those
    # imports and are removed again right after, so nothing else sees them.
    stubs = {"spear_tts_pytorch": ["TextToSemantic"],
             "audiolm_pytorch": ["SoundStream", "HubertWithKmeans", "FairseqVQWav2Vec"],
             "soundstorm_pytorch.trainer": ["SoundStormTrainer"]}
    added = []
    for name, attrs in stubs.items():
        if name not in sys.modules:
            module = types.ModuleType(name)
            for attr in attrs:  # classes, since type hints of the model code name them
                setattr(module, attr, type(attr, (), {"__module__": name}))
            sys.modules[name] = module
            added.append(name)
    try:
        from soundstorm_pytorch import soundstorm
    except ImportError as e:
        raise ImportError(f"the reference SoundStorm is not installed: {SOUNDSTORM_REQUIREMENT} "
                          f"({e})") from e
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return soundstorm
