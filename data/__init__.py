"""The shard builder: `python -m data.build` (raw corpora -> shards), `python -m data.demo`
(the offline demo corpus). Readers per corpus format in readers.py, media encoders in media.py.
"""

# Every command here reads or writes shards through TensorFlow: start it without its notices.
from anygpt_jax import runtime

runtime.start_tensorflow_quietly()
