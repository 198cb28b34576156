"""Training data: shard format, seqio preprocessors, packing, the per-host input pipeline.

shards.py (TFRecord format + manifest), source.py (seqio DataSource), preprocessors.py
(templates -> ids), packing.py (feature converter, batch contract), pipeline.py (get_dataset,
resumable iterator). Registrations live in anygpt_jax/tasks.py, the builder in data/.
"""
