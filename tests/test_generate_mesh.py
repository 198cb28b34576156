"""generate() on a (data 2, fsdp 2, tensor 2) mesh of 8 CPU devices equals one device."""

import pytest
from test_generate import load_tiny, span_prompts, text_prompts

from anygpt_jax import partitioning
from anygpt_jax.inference import GenerationSettings


@pytest.fixture(scope="module")
def pair(anygpt_tokenizer_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mesh"))
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, single = load_tiny(root, anygpt_tokenizer_dir)
    _, sharded = load_tiny(root, anygpt_tokenizer_dir, mesh=mesh)
    return single, sharded


@pytest.mark.slow  # compiles sharded programs for 8 devices: ~1 min on 2 cores
def test_sharded_greedy_and_beams_equal_single_device(pair):
    single, sharded = pair
    v = single.vocab
    # One prompt: the batch still pads to the 4 batch shards (data x fsdp).
    prompts = span_prompts(v)[:1] + text_prompts(v, 2)
    greedy = GenerationSettings(do_sample=False, max_new_tokens=34, repetition_penalty=1.2)
    assert sharded.generate(prompts, greedy) == single.generate(prompts, greedy)
    assert sharded.generate(prompts[1:2], greedy) == single.generate(prompts[1:2], greedy)
    beams = GenerationSettings(do_sample=False, max_new_tokens=8, num_beams=2)
    assert sharded.generate(prompts[1:], beams) == single.generate(prompts[1:], beams)
