"""Process set-up: XLA compile options and when a process joins a multi-host job."""


import jax
import pytest

from anygpt_jax import runtime


@pytest.fixture
def joins(monkeypatch):
    """Records jax.distributed.initialize calls instead of joining a real job."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_single_process_joins_nothing(joins, monkeypatch):
    runtime.initialize_distributed()
    assert joins == []


def test_coordinator_address_joins_with_the_given_ids(joins, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    runtime.initialize_distributed()
    assert joins == [dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1)]


@pytest.mark.parametrize("platforms, joined", [("", True), ("tpu", True), ("cpu", False)])
def test_tpu_vm_environment_joins_unless_kept_off_the_tpu(joins, monkeypatch, platforms, joined):
    # libtpu leaves TPU_WORKER_HOSTNAMES behind in processes that only compiled for a TPU.
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "WARNING: could not determine TPU worker hostnames")
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    runtime.initialize_distributed()
    assert joins == ([{}] if joined else [])


def test_training_compiler_options_only_for_narrow_compute_on_cpu(monkeypatch):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from anygpt_jax.model.mixed_dot import mixed_dot

    monkeypatch.delenv("ANYGPT_JAX_DEFAULT_XLA", raising=False)
    cpu = jax.devices("cpu")[0]
    assert runtime.training_compiler_options(cpu, "float32") is None
    options = runtime.training_compiler_options(cpu, "bfloat16")
    assert options is not None
    # XLA accepts the option's value, and the bf16 matmul gives what it gives without it.
    x = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    fn = lambda a: mixed_dot(a, a, ((1,), (1,)), jnp.bfloat16, jnp.float32)  # noqa: E731
    np.testing.assert_allclose(jax.jit(fn, compiler_options=options)(x), jax.jit(fn)(x),
                               rtol=1e-5, atol=1e-5)

    # Reductions stay where XLA's default puts them (YNNPACK, where it takes them).
    def reduction_on_ynn(compiler_options) -> bool:
        tokens = jnp.ones((1024, 768))  # a norm scale's gradient sums over tokens
        compiled = jax.jit(lambda a: (a * a).sum(0)).lower(tokens).compile(compiler_options)
        return "__ynn_fusion" in compiled.as_text()

    assert reduction_on_ynn(options) == reduction_on_ynn(None)

    class Tpu:
        platform = "tpu"

    assert runtime.training_compiler_options(Tpu(), "bfloat16") is None
    monkeypatch.setenv("ANYGPT_JAX_DEFAULT_XLA", "1")
    assert runtime.training_compiler_options(cpu, "bfloat16") is None


def test_xla_cpu_compiles_a_batched_dot_with_a_broadcast_operand_correctly():
    # YNNPACK's `dot` fusion type (once set process-wide by this project) miscompiled this
    # pattern on XLA:CPU: values off by up to 1e16 and gradients of 1e18 to 1e25, varying run to
    # run. Any XLA flag the tests or CLIs set again must keep it right.
    import jax
    import jax.numpy as jnp
    import numpy as np

    e = np.random.default_rng(0).standard_normal((2, 8, 8)).astype(np.float32)

    def f(e, c):
        return jnp.sum((e @ jnp.full_like(e, c)) * e, axis=-1)

    want = np.sum((e.astype(np.float64) @ np.full((2, 8, 8), 1.5)) * e, axis=-1)
    np.testing.assert_allclose(jax.jit(f)(e, np.float32(1.5)), want, rtol=1e-5, atol=1e-4)
    grad = jax.jit(jax.grad(lambda e, c: jnp.sum(f(e, c) ** 2), argnums=1))
    want_grad = np.sum(2 * want * np.sum((e.astype(np.float64) @ np.ones((2, 8, 8))) * e, -1))
    np.testing.assert_allclose(grad(e, np.float32(1.5)), want_grad, rtol=1e-4)


def test_a_host_without_tpu_chips_never_starts_libtpu():
    """Importing anygpt_jax keeps JAX off the TPU backend here (no chips): JAX starts on the
    CPU without libtpu's failure lines; an explicit JAX_PLATFORMS is left alone."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    code = ("import anygpt_jax, jax, os; "
            "print(jax.devices()[0].platform, os.environ['JAX_PLATFORMS'])")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["cpu", "cpu"]
    for line in ("host bounds", "TPU_WORKER", "libtpu", "E0000"):
        assert line not in r.stderr, r.stderr[-2000:]
    keep = "import anygpt_jax, os; print(os.environ['JAX_PLATFORMS'])"
    r = subprocess.run([sys.executable, "-c", keep], env=dict(env, JAX_PLATFORMS="tpu,cpu"),
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "tpu,cpu", r.stderr[-2000:]
