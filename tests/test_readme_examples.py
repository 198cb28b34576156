"""The README's Python examples run as written, on a tiny model in place of the checkpoint."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from test_trainer import one_device_mesh, run, vocab  # noqa: F401 (fixtures)

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
CHECKPOINT = "ckpt/anygpt-base"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section titled `section`, in order."""
    text = open(README).read()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def test_using_a_checkpoint_runs_as_written(vocab, tmp_path, one_device_mesh):  # noqa: F811
    model_dir = tmp_path / "m"
    run(model_dir, vocab, 1, every=1)
    blocks = python_blocks("Using a checkpoint")
    assert len(blocks) == 2 and all(CHECKPOINT in blocks[0] or "generate" in b for b in blocks)
    namespace: dict = {}
    for block in blocks:
        exec(block.replace(CHECKPOINT, str(model_dir)), namespace)  # noqa: S102
    ids, logits, out = namespace["ids"], namespace["logits"], namespace["out"]
    assert isinstance(ids, list) and logits.shape == (len(ids), vocab.vocab_size)
    assert namespace["batch"].shape == (2, len(ids), vocab.vocab_size)
    assert np.isfinite(logits).all() and len(out) > 0 and isinstance(out[0], int)
    assert len(namespace["outs"]) == 2


def shell_commands(section: str) -> list[str]:
    """The commands (non-comment lines) of the ```bash blocks of the README section `section`."""
    text = open(README).read()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], re.S)
    return [c.strip() for b in blocks for c in b.splitlines()
            if c.strip() and not c.strip().startswith("#")]


@pytest.mark.slow
def test_the_whole_checkpoint_section_runs_as_written(anygpt_tokenizer_dir, tmp_path):
    """Its shell commands convert a transformers AnyGPT directory at the README's path and
    export it back; its Python blocks then run on the converted directory, unchanged."""
    from conftest import make_hf_anygpt_dir

    make_hf_anygpt_dir(str(tmp_path / "path" / "to" / "AnyGPT-base"), anygpt_tokenizer_dir,
                       "gqa_untied")
    repo = os.path.dirname(README)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    commands = shell_commands("Using a checkpoint")
    assert [c.split()[:4] for c in commands] == [
        ["python", "-m", "converters.llama", "import"],
        ["python", "-m", "converters.llama", "export"]]
    for command in commands:
        r = subprocess.run(["bash", "-ec", command], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, f"{command}\n{r.stderr[-3000:]}"
    assert (tmp_path / "hf" / "anygpt-base" / "config.json").is_file()
    script = "\n".join(python_blocks("Using a checkpoint")) + "\nprint(logits.shape, len(outs))\n"
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "2"


def test_every_benchmark_command_names_a_module_that_exists():
    """The Benchmarks table's commands run from the repository root as modules (a script
    path would not find the repository's packages)."""
    text = open(README).read()
    table = text[text.index("## Benchmarks"):]
    commands = re.findall(r"`(python [^`]*benchmarks[^`]*)`", table)
    assert commands, "no benchmark commands in the README table"
    repo = os.path.dirname(README)
    for command in commands:
        module = re.match(r"python -m benchmarks\.(\w+)", command)
        assert module, f"{command!r}: run it as `python -m benchmarks.NAME`"
        assert os.path.isfile(os.path.join(repo, "benchmarks", module.group(1) + ".py")), command
