"""`python hold_save.py --gin_file=...`: the training CLI, with orbax's commit of one step held.

HOLD_STEP names the step; once all of its checkpoint is written and only the commit is left
(the rename of the temporary directory locally, `commit_success.txt` on gs://), this writes
HOLD_FLAG and sleeps, so a test can kill the process in the middle of that save. The hook is
orbax's private `atomicity.on_commit_callback`; the assertion below fails loudly if an orbax
upgrade moves it.
"""

import os
import runpy
import sys
import time

from orbax.checkpoint._src.path import atomicity

HOLD_STEP = os.environ["HOLD_STEP"]
HOLD_FLAG = os.environ["HOLD_FLAG"]
assert hasattr(atomicity, "on_commit_callback"), "orbax moved on_commit_callback"
_commit = atomicity.on_commit_callback


async def _held_commit(tmp_dir, **kwargs):
    if tmp_dir.get_final().name == HOLD_STEP:
        with open(HOLD_FLAG, "w") as f:
            f.write(str(tmp_dir.get()))
        time.sleep(3600)
    return await _commit(tmp_dir, **kwargs)


atomicity.on_commit_callback = _held_commit
sys.argv = ["anygpt_jax.train", *sys.argv[1:]]
runpy.run_module("anygpt_jax.train", run_name="__main__", alter_sys=True)
