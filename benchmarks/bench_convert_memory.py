"""Peak memory of `converters.llama import` and `export` against the size of the weights.

A 7B checkpoint (13.5 GB in bf16) must convert on a 24 GiB machine, so the converter may
hold one copy of the weights, never two. This builds a bf16 LLaMA of ~0.5B parameters with
transformers (random weights, sharded safetensors), converts it both ways in child
processes, and prints each one's peak anonymous memory above an idle interpreter with the
same imports, as a ratio to the weights' bytes (goal: < 1.5). Anonymous memory is what
the converter allocates; the safetensors it reads are memory-mapped, and their pages are
page cache the kernel reclaims under pressure, so plain RSS would count the input twice.

    python -m benchmarks.bench_convert_memory [--layers 16] [--hidden 1536]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

IDLE = (
    "import jax, orbax.checkpoint, torch, transformers, safetensors, converters.llama, "
    "anygpt_jax.vocab, seqio, tensorflow"
)


SAMPLER = """
import sys, threading, time
peak = [0]
def _anon():
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon:'):
            return int(line.split()[1]) * 1024
def _sample():
    while True:
        peak[0] = max(peak[0], _anon())
        time.sleep(0.005)
threading.Thread(target=_sample, daemon=True).start()
"""


def peak_rss_bytes(code: str) -> int:
    """Peak anonymous resident memory of a child python running `code` (sampled every 5 ms)."""
    script = (
        f"{SAMPLER}\n{code}\n"
        "time.sleep(0.05); peak[0] = max(peak[0], _anon()); print(peak[0], file=sys.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    return int(run.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1536)
    args = parser.parse_args()
    import torch
    import transformers

    from anygpt_jax.vocab import MergedVocabulary

    with tempfile.TemporaryDirectory() as root:
        hf_dir = os.path.join(root, "hf")
        vocab = MergedVocabulary.from_tokenizer_dir(_tokenizer_dir(root))
        config = transformers.LlamaConfig(
            vocab_size=vocab.vocab_size,
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 128,
            num_key_value_heads=args.hidden // 128,
            architectures=["LlamaForCausalLM"],
        )
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(config)
        model = model.to_empty(device="cpu").to(torch.bfloat16)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        model.save_pretrained(hf_dir, max_shard_size="200MB")
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        del model
        vocab.save(hf_dir)
        ours, back = os.path.join(root, "ours"), os.path.join(root, "back")
        idle = peak_rss_bytes(IDLE)
        imp = peak_rss_bytes(f"{IDLE}\nconverters.llama.import_checkpoint({hf_dir!r}, {ours!r})")
        exp = peak_rss_bytes(f"{IDLE}\nconverters.llama.export_checkpoint({ours!r}, {back!r})")
    print(
        f"weights: {weight_bytes / 1e9:.2f} GB bf16 ({weight_bytes / 2e9:.2f}B params); "
        f"idle interpreter {idle / 1e9:.2f} GB"
    )
    for name, peak in (("import", imp), ("export", exp)):
        print(
            f"{name}: peak anonymous RSS {peak / 1e9:.2f} GB, "
            f"above idle {(peak - idle) / 1e9:.2f} GB = "
            f"{(peak - idle) / weight_bytes:.2f}x the weights (goal < 1.5x)"
        )


def _tokenizer_dir(root: str) -> str:
    """A real AnyGPT-style tokenizer directory (the tests' tiny SentencePiece recipe)."""
    from anygpt_jax.testing.tokenizers import build_anygpt_dir, train_spm

    spm_path = os.path.join(root, "llama.model")
    train_spm(spm_path)
    return build_anygpt_dir(os.path.join(root, "tok"), spm_path)


if __name__ == "__main__":
    main()
