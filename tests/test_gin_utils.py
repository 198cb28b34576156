"""gin_utils: the flags, file resolution, parse and error lines every CLI shares."""

import argparse
import logging
import os

import gin
import pytest

from anygpt_jax import gin_utils


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="cli")


def test_flags_bindings_and_usage_errors(tmp_path, capsys):
    args, bindings = gin_utils.parse_flags(
        parser(), ["--gin_file=a.gin", "--gin.X=1", "--gin_file=b.gin"], "a.gin")
    assert args.gin_file == ["a.gin", "b.gin"] and bindings == ["X=1"]
    for argv, message in (([], "at least one --gin_file"), (["--gin_file=a", "--bogus"],
                          "unrecognized argument '--bogus'"),
                          (["--gin_file=a", f"--gin_search_path={tmp_path / 'no'}"],
                           "is not a directory")):
        with pytest.raises(SystemExit) as e:
            gin_utils.parse_flags(parser(), argv, "a.gin")
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert gin_utils.parse_flags(parser(), [])[0].gin_file == []  # optional without an example


def test_gin_files_resolve_to_absolute_paths_or_under_tpu_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.gin").write_text("")
    assert gin_utils.resolve_gin_file("runs/x.gin") == str(tmp_path / "runs" / "x.gin")
    assert gin_utils.resolve_gin_file("models/tiny.gin") == os.path.join(
        gin_utils.CONFIG_DIR, "models", "tiny.gin")
    with pytest.raises(gin_utils.ConfigError, match="gin file not found: nope.gin"):
        gin_utils.resolve_gin_file("nope.gin")


def test_includes_resolve_quietly_and_required_macros_are_checked(tmp_path, caplog):
    run = tmp_path / "run.gin"
    run.write_text("include 'models/tiny.gin'\nMODEL_DIR = None\n")
    with caplog.at_level(logging.INFO):
        gin_utils.parse_gin_files([str(run)], ["TRAIN_STEPS = 3"], required_macros=("TRAIN_STEPS",))
    assert gin.query_parameter("%TRAIN_STEPS") == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    with pytest.raises(gin_utils.ConfigError, match=r"not set: \['MODEL_DIR'\]"):
        gin_utils.parse_gin_files([str(run)], [], required_macros=("MODEL_DIR",))
    with pytest.raises(gin_utils.ConfigError, match="gin: "):
        gin_utils.parse_gin_files([str(run)], ["no_such_configurable.x = 1"])
    gin.clear_config()


def test_error_line_drops_gins_context():
    e = ValueError("bad value\n  In call to configurable 'train' (<function train>)")
    assert gin_utils.error_line(e) == "bad value"
