"""The shard builder: `python -m data.build` (raw corpora -> shards), `python -m data.demo`
(the offline demo corpus). Readers per corpus format in readers.py, media encoders in media.py.
"""
