"""Import the model code of open_clip and laion_clap (the CLIP / CLAP score references) here,
where no torchvision matches the CPU torch.

Both packages import torchvision in their `__init__` (image transforms, datasets) and, at module
level, `torchvision.ops.misc.FrozenBatchNorm2d` for a training utility (freezing batch norms)
that inference never calls. `import_model_code` skips the package `__init__` (a bare package
module whose `__path__` is the installed directory) and lends that one class name only while the
modules import; the networks and their forward passes are the packages' own code.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest


def _package_dir(package: str) -> str:
    spec = importlib.util.find_spec(package)  # locates it without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed (scripts/setup.sh installs it)")
    return list(spec.submodule_search_locations)[0]


def import_model_code(package: str, modules: list[str], subdir: str = "") -> list:
    """The named modules of `package` (or of its `subdir` package), without the package
    `__init__`; the bare package stays registered so later relative imports resolve."""
    import transformers  # noqa: F401 - probes for torchvision once, before the stand-in exists

    name = f"{package}.{subdir}" if subdir else package
    root = _package_dir(package)
    for pkg_name, path in ((package, root), (name, os.path.join(root, subdir))):
        if pkg_name not in sys.modules:
            module = types.ModuleType(pkg_name)
            module.__path__ = [path]
            module.__spec__ = importlib.machinery.ModuleSpec(pkg_name, None, is_package=True)
            module.__spec__.submodule_search_locations = [path]
            sys.modules[pkg_name] = module
    misc = types.ModuleType("torchvision.ops.misc")

    class FrozenBatchNorm2d:  # the training utility's class, never instantiated here
        pass

    misc.FrozenBatchNorm2d = FrozenBatchNorm2d
    lent = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.ops")}
    lent["torchvision.ops.misc"] = misc
    saved = {k: sys.modules.get(k) for k in lent}
    sys.modules.update(lent)
    try:
        return [importlib.import_module(f"{name}.{m}") for m in modules]
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
