"""Evaluation of AnyGPT checkpoints on the paper's benchmarks (REFERENCE.md §7).

metrics.py / normalization.py: CIDEr, BLEU, WER and embedding scores; models.py: the scoring
models (CLIP, CLAP, ASR, speaker embeddings) from local paths; scoring.py: seqio metric
functions; tasks.py: seqio eval tasks over `python -m data.eval_sets` shards; teacher_forced.py
and loop.py: the evaluation itself (`python -m anygpt_jax.eval`, or `loop.evaluate` from
training).
"""
