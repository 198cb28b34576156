"""Cost of checkpoint fingerprints (anygpt_jax/integrity.py) against the save they protect.

    python -m benchmarks.bench_checkpoint_integrity [--vocab 18418] [--repeats 5]

Builds the CPU default's train state (tpu_configs/cpu_default.gin: the tiny model, the demo
vocabulary, AdamW), then times in one process: the fingerprints of every array of the state
(what TrainCheckpointer.save adds), a synchronous orbax save of the same state to a temp
directory, and a plain copy of the state's bytes (the memory-bandwidth roofline the
fingerprint pass is bound by). Prints fingerprint time / save time and the pass's bandwidth
as a fraction of the copy's.
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from anygpt_jax import integrity
from anygpt_jax.model import ModelConfig, Transformer
from anygpt_jax.training.optimizer import learning_rate_schedule, make_optimizer
from anygpt_jax.training.step import init_train_state
from benchmarks import best_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=18418, help="vocabulary size (the demo's)")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    cfg = ModelConfig(vocab_size=a.vocab, hidden_size=128, intermediate_size=384, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=4608,
                      tie_word_embeddings=False, scan_layers=False)
    tx = make_optimizer(learning_rate_schedule(80))
    params = Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
    state = jax.device_put(init_train_state(params, tx))
    leaves = [x for x in jax.tree_util.tree_leaves(state) if hasattr(x, "dtype")]
    nbytes = sum(x.size * x.dtype.itemsize for x in leaves)

    fingerprint_s = best_of(lambda: integrity.fingerprints(state), a.repeats)
    copy = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x + 0, t))
    copy_s = best_of(lambda: jax.block_until_ready(copy(leaves)), a.repeats)

    def save():
        with tempfile.TemporaryDirectory() as tmp, ocp.StandardCheckpointer() as c:
            c.save(f"{tmp}/state", state)
            c.wait_until_finished()

    save_s = best_of(save, a.repeats)
    read_gbs = nbytes / fingerprint_s / 1e9
    copy_gbs = 2 * nbytes / copy_s / 1e9  # a copy reads and writes every byte
    print(f"CPU default train state: {len(leaves)} arrays, {nbytes / 1e6:.1f} MB; "
          f"devices {jax.device_count()} x {jax.devices()[0].platform}")
    print(f"fingerprints {fingerprint_s * 1e3:.1f} ms ({read_gbs:.1f} GB/s read), "
          f"orbax save {save_s * 1e3:.1f} ms, copy {copy_s * 1e3:.1f} ms ({copy_gbs:.1f} GB/s)")
    print(f"fingerprints / save = {fingerprint_s / save_s:.3f}; fingerprint read rate = "
          f"{read_gbs / copy_gbs:.0%} of the copy's bandwidth")
    assert np.isfinite(fingerprint_s)


if __name__ == "__main__":
    main()
