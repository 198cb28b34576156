"""The installed package: data/ and converters/ go inside it, never as top-level `data`."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ~15 s: builds a wheel from a copy of the sources (the checkout stays untouched).
@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("anygpt_jax", "data", "converters"):
        shutil.copytree(os.path.join(ROOT, name), src / name, ignore=ignore)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", str(src), "-w", str(tmp_path / "wheel")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "anygpt_jax"}
    for module in ("anygpt_jax/converters/llama.py", "anygpt_jax/recipes/build.py",
                   "anygpt_jax/recipes/demo.py", "anygpt_jax/converters/open_clip.py"):
        assert module in names


def test_the_installed_names_run_outside_the_checkout(tmp_path):
    env = dict(os.environ, PYTHONPATH="")
    for module in ("anygpt_jax.converters.llama", "anygpt_jax.recipes.build"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                           text=True, cwd=tmp_path, env=env, timeout=300)
        assert r.returncode == 0 and "usage:" in r.stdout, (module, r.stderr[-2000:])
    r = subprocess.run([sys.executable, "-c", "import data"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=60)
    assert "No module named 'data'" in r.stderr
