"""The README's Python examples run as written, on a tiny model in place of the checkpoint."""

import os
import re

import numpy as np
from test_trainer import one_device_mesh, run, vocab  # noqa: F401 (fixtures)

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
CHECKPOINT = "ckpt/anygpt-base"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section titled `section`, in order."""
    text = open(README).read()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def test_using_a_checkpoint_runs_as_written(vocab, tmp_path, one_device_mesh):  # noqa: F811
    model_dir = tmp_path / "m"
    run(model_dir, vocab, 1, every=1)
    blocks = python_blocks("Using a checkpoint")
    assert len(blocks) == 2 and all(CHECKPOINT in blocks[0] or "generate" in b for b in blocks)
    namespace: dict = {}
    for block in blocks:
        exec(block.replace(CHECKPOINT, str(model_dir)), namespace)  # noqa: S102
    ids, logits, out = namespace["ids"], namespace["logits"], namespace["out"]
    assert isinstance(ids, list) and logits.shape == (len(ids), vocab.vocab_size)
    assert namespace["batch"].shape == (2, len(ids), vocab.vocab_size)
    assert np.isfinite(logits).all() and len(out) > 0 and isinstance(out[0], int)
    assert len(namespace["outs"]) == 2
