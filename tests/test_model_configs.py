"""The gin model configs parse into the ModelConfigs they claim."""

import os

import gin
import jax
import pytest

from anygpt_jax.model import ModelConfig, param_shapes

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "tpu_configs", "models")


def parse(name: str) -> ModelConfig:
    gin.clear_config()
    gin.parse_config_file(os.path.join(CONFIG_DIR, name))
    try:
        return ModelConfig()
    finally:
        gin.clear_config()


def n_params(cfg: ModelConfig) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(param_shapes(cfg)))


def test_anygpt_7b_is_llama2_7b_with_the_merged_vocabulary():
    cfg = parse("anygpt_7b.gin")
    assert cfg.vocab_size == 53516 and cfg.padded_vocab_size % 1024 == 0
    # LLaMA-2-7B has 6.74B parameters with 32,000 ids; each extra id adds 2 x 4096.
    unpadded = n_params(cfg.replace(vocab_pad_multiple=1))
    assert unpadded == 6_738_415_616 + (53516 - 32000) * 2 * 4096


def test_tiny_builds():
    cfg = parse("tiny.gin")
    assert cfg.num_layers == 2 and cfg.vocab_size == 53516
    assert n_params(cfg) < 20_000_000


def test_unknown_binding_is_refused():
    gin.clear_config()
    with pytest.raises(ValueError, match="num_layer"):
        gin.parse_config("ModelConfig.num_layer = 3")
    gin.clear_config()
