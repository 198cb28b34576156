"""Profiler traces of chosen train steps: the window, resumes inside it, bad windows."""

import jax
import pytest

from anygpt_jax.training.profiling import StepProfiler, check_profile_steps


@pytest.fixture
def trace_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda d: calls.append(("start", d)))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
    return calls


def _run(profiler: StepProfiler, steps: range, calls: list) -> list:
    profiler.start(steps[0] - 1)
    for step in steps:
        profiler.before_step(step)
        calls.append(("step", step))
        profiler.after_step(step)
    profiler.end()
    return calls


def test_traces_exactly_the_window(trace_calls, tmp_path):
    calls = _run(StepProfiler((2, 3), str(tmp_path)), range(1, 6), trace_calls)
    assert calls == [("step", 1), ("start", str(tmp_path)), ("step", 2), ("step", 3), ("stop",),
                     ("step", 4), ("step", 5)]


def test_a_resume_inside_the_window_traces_the_rest_and_after_it_nothing(trace_calls, tmp_path):
    calls = _run(StepProfiler((2, 4), str(tmp_path)), range(3, 6), trace_calls)
    assert calls[:4] == [("start", str(tmp_path)), ("step", 3), ("step", 4), ("stop",)]
    trace_calls.clear()
    assert _run(StepProfiler((2, 4), str(tmp_path)), range(5, 7), trace_calls) == [
        ("step", 5), ("step", 6)]


def test_a_run_stopped_inside_the_window_ends_its_trace(trace_calls, tmp_path):
    calls = _run(StepProfiler((2, 9), str(tmp_path)), range(1, 4), trace_calls)
    assert calls[-1] == ("stop",) and calls.count(("start", str(tmp_path))) == 1


@pytest.mark.parametrize("window", [(0, 2), (3, 2), (1, 11), ("a", 2), (1,)])
def test_bad_windows_are_refused_naming_the_binding(window):
    with pytest.raises(ValueError, match=r"StepProfiler\.steps="):
        check_profile_steps(window, train_steps=10)
    check_profile_steps(None, train_steps=10)
    check_profile_steps((1, 10), train_steps=10)


def test_a_malformed_window_is_refused_naming_the_binding_when_built():
    with pytest.raises(ValueError, match=r"StepProfiler\.steps=\('a', 2\): expected"):
        StepProfiler(("a", 2))
