"""Dependencies point one way: the layers below never import the ones above them (AST scan)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "anygpt_jax"

# (modules, under LIBRARY, that must not import...) -> the forbidden module prefixes.
RULES = [
    ("training", ("anygpt_jax.evaluation", "anygpt_jax.api", "anygpt_jax.inference",
                  "anygpt_jax.train", "anygpt_jax.eval", "anygpt_jax.infer")),
    ("checkpointing.py", ("anygpt_jax.training",)),
    ("inference/generate.py", ("anygpt_jax.api",)),
    ("model", ("anygpt_jax.training", "anygpt_jax.evaluation", "anygpt_jax.inference",
               "anygpt_jax.api", "anygpt_jax.data")),
    ("vocab", ("anygpt_jax.training", "anygpt_jax.evaluation", "anygpt_jax.inference",
               "anygpt_jax.api", "anygpt_jax.model")),
    ("data/features.py", ("anygpt_jax", "tensorflow", "seqio")),
    # Serving sits on top of inference: the engine knows nothing of HTTP.
    ("inference", ("anygpt_jax.serving", "anygpt_jax.serve", "fastapi", "uvicorn")),
]
# CLIs that once took their gin helpers from train.py; they share gin_utils instead (aot
# parses train's own configuration, so it calls train.parse_gin).
GIN_UTILS_CLIS = ("eval.py", "infer.py")


def imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in `path`, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
    return out


def files(where: str) -> list[pathlib.Path]:
    p = LIBRARY / where
    return [p] if p.is_file() else sorted(p.rglob("*.py"))


@pytest.mark.parametrize(("where", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_layers_do_not_import_upwards(where, forbidden):
    found = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files(where)
        for module, names in imports(path)
        for full in [module, *(f"{module}.{n}" for n in names)]
        if any(full == f or full.startswith(f + ".") for f in forbidden)
    ]
    assert not sorted(set(found))


def test_no_private_names_cross_packages():
    found = []
    for path in LIBRARY.rglob("*.py"):
        package = path.relative_to(LIBRARY).parts[0]
        for module, names in imports(path):
            parts = module.split(".")
            other = parts[0] == "anygpt_jax" and len(parts) > 1 and parts[1] != package
            found += [f"{path.relative_to(ROOT)}: {module}.{n}" for n in names
                      if other and n.startswith("_") and not n.startswith("__")]
    assert not found


def test_clis_share_gin_helpers_through_gin_utils():
    for name in GIN_UTILS_CLIS:
        for module, names in imports(LIBRARY / name):
            assert module != "anygpt_jax.train" and not (
                module == "anygpt_jax" and "train" in names), f"{name} imports train.py"


def test_the_library_does_not_import_the_data_or_converters_clis():
    """Under either name: the checkout's `data` / `converters`, or the installed
    `anygpt_jax.recipes` / `anygpt_jax.converters` (setup.py's INSTALLED_AS)."""
    found = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in LIBRARY.rglob("*.py")
        for module, names in imports(path)
        for full in [module, *(f"{module}.{n}" for n in names)]
        if full.split(".")[0] in ("data", "converters")
        or full.startswith(("anygpt_jax.recipes", "anygpt_jax.converters"))
    ]
    assert not found


def test_only_tests_and_benchmarks_use_the_testing_package():
    found = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in LIBRARY.rglob("*.py")
        if "testing" not in path.relative_to(LIBRARY).parts
        for module, names in imports(path)
        for full in [module, *(f"{module}.{n}" for n in names)]
        if full.startswith("anygpt_jax.testing")
    ]
    assert not found


def test_shipped_converters_hold_no_import_stubs():
    """Stand-ins for the reference packages' training stacks live in anygpt_jax.testing."""
    assert not [p.name for p in (ROOT / "converters").glob("*.py")
                if "sys.modules" in p.read_text()]
