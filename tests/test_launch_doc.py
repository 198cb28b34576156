"""The rehearsal in tpu_configs/LAUNCH.md runs as written against a GCS API emulator: the demo
corpus built into the bucket, the CPU default trained from it into a gs:// MODEL_DIR, and
exported to a transformers directory in the bucket. Only the run is shortened."""

import os
import re
import subprocess

import pytest

from anygpt_jax import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "tpu_configs", "LAUNCH.md")
SHORTER = " --gin.TRAIN_STEPS=12 --gin.CHECKPOINT_EVERY=6"  # past the 10 warmup steps


def rehearsal_commands() -> list[str]:
    """The commands of the bash block that follows the `rehearsal` marker, one per entry."""
    with open(LAUNCH, encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"<!-- rehearsal:.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert block, f"{LAUNCH}: no rehearsal block"
    return [c.strip() for c in block.group(1).replace("\\\n", " ").splitlines() if c.strip()]


def test_the_rehearsal_names_the_bucket_by_variable():
    commands = rehearsal_commands()
    assert [c.split()[2] for c in commands] == ["data.demo", "anygpt_jax.train",
                                                 "converters.llama"]
    assert all("gs://$BUCKET/" in c for c in commands)


@pytest.mark.slow
def test_launch_rehearsal_runs_as_written_on_the_emulator(gcs):
    env = dict(os.environ, BUCKET=gcs.bucket, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3")
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f
    )
    for command in rehearsal_commands():
        if "anygpt_jax.train" in command:
            command += SHORTER
        r = subprocess.run(["bash", "-ec", command], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    root = f"gs://{gcs.bucket}"
    assert storage.exists(f"{root}/cpu_default/checkpoints/12/commit_success.txt")
    assert storage.dir_state(f"{root}/cpu_default_hf") == "committed"
    assert storage.exists(f"{root}/cpu_default_hf/config.json")
