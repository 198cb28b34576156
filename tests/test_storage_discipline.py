"""Every path a user gives goes through anygpt_jax.storage: a scan of the library for direct
file-system calls, so a new one fails CI.

A call that touches only a local path by design (a temp file, a module's own package data)
carries a `# local: <why>` comment on its line.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("anygpt_jax", "converters", "data")
EXEMPT = {os.path.join("anygpt_jax", "storage.py")}  # the layer itself
# Test support: builds fixtures in local temp directories, never a user's path.
EXEMPT_DIRS = (os.path.join("anygpt_jax", "testing"),)
PRAGMA = "# local:"

OS_PATH_FS = {
    "exists", "lexists", "isdir", "isfile", "islink", "getsize", "getmtime", "abspath",
    "realpath", "expanduser", "samefile",
}
OS_FS = {
    "makedirs", "mkdir", "replace", "rename", "remove", "unlink", "listdir", "scandir", "walk",
    "stat", "rmdir", "chdir",
}
MODULES_FS = {"shutil", "glob"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _offence(call: ast.Call) -> str | None:
    name = _dotted(call.func)
    if name == "open":
        return "open()"
    head, _, last = name.rpartition(".")
    if head == "os.path" and last in OS_PATH_FS:
        return name
    if head == "os" and last in OS_FS:
        return name
    if head in MODULES_FS:
        return name
    if name.startswith("tf.io.gfile."):
        return name  # TensorFlow's gs:// client cannot be pointed at an emulator
    return None


def _library_files():
    for package in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
                    if rel not in EXEMPT and not rel.startswith(EXEMPT_DIRS):
                        yield rel


def find_offences() -> list[str]:
    out = []
    for rel in _library_files():
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            source = f.read()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, rel)):
            if isinstance(node, ast.Call) and (what := _offence(node)):
                line = lines[node.lineno - 1]
                if PRAGMA not in line:
                    out.append(f"{rel}:{node.lineno}: {what}")
    return sorted(out)


def test_no_direct_file_system_calls_in_the_library():
    offences = find_offences()
    assert not offences, (
        "use anygpt_jax.storage (local and gs:// alike), or mark a by-design local call "
        f"with '{PRAGMA} <why>':\n" + "\n".join(offences)
    )


@pytest.mark.parametrize("snippet, bad", [
    ("open(p)", True), ("os.path.exists(p)", True), ("shutil.rmtree(p)", True),
    ("os.makedirs(p)", True), ("tf.io.gfile.exists(p)", True), ("os.path.join(a, b)", False),
    ("storage.exists(p)", False), ("open(p)  # local: a temp file", False),
])
def test_the_scan_catches_what_it_should(snippet, bad):
    call = ast.parse(snippet).body[0].value
    found = _offence(call) is not None and PRAGMA not in snippet
    assert found == bad
