"""The engine switch (scratchvae/engine/__init__.py): one choice for the whole process, three
doors (Python, the environment, the command line), one dispatch point per kernel."""

import os
import subprocess
import sys

import pytest

from scratchvae import engine


@pytest.fixture
def kernel_pair():
    """A throwaway kernel: a reference and a registered fast implementation that differ, so a
    test can see which one ran."""
    name = "tests.switch_probe"

    @engine.dispatch(name)
    def probe(x):
        return ("reference", x)

    @engine.register(name)
    def probe_fast(x):
        return ("fast", x)

    yield probe
    engine._REFERENCES.pop(name)
    engine._FAST.pop(name)


def test_calls_go_to_the_engine_in_force(kernel_pair):
    with engine.using("fast"):
        assert kernel_pair(3) == ("fast", 3)
        assert engine.implementation("tests.switch_probe").__name__ == "probe_fast"
        with engine.using("reference"):
            assert kernel_pair(3) == ("reference", 3)
        assert kernel_pair(3) == ("fast", 3)  # restored


def test_the_wrapper_keeps_the_reference_and_its_docstring(kernel_pair):
    assert kernel_pair.reference(1) == ("reference", 1)
    assert kernel_pair.kernel_name == "tests.switch_probe"
    assert kernel_pair.__name__ == "probe"


def test_a_kernel_without_a_fast_implementation_runs_the_reference():
    @engine.dispatch("tests.reference_only")
    def only(x):
        return x + 1

    try:
        with engine.using("fast"):
            assert only(1) == 2
    finally:
        engine._REFERENCES.pop("tests.reference_only")


def test_use_returns_the_previous_engine_and_refuses_unknown_names():
    before = engine.current()
    try:
        assert engine.use("reference") == before
        assert engine.use("fast") == "reference"
        with pytest.raises(ValueError, match="engine: expected one of reference, fast"):
            engine.use("quick")
        assert engine.current() == "fast"
    finally:
        engine.use(before)


def test_a_kernel_name_is_defined_once(kernel_pair):
    with pytest.raises(ValueError, match="kernel 'tests.switch_probe' is already defined"):
        engine.dispatch("tests.switch_probe")(lambda x: x)


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if k != engine.ENV_VAR}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full)


def test_the_environment_chooses_the_engine_at_import():
    code = "from scratchvae import engine; print(engine.current())"
    assert _run(code).stdout.strip() == "fast"  # the default
    assert _run(code, SCRATCHVAE_ENGINE="reference").stdout.strip() == "reference"
    bad = _run(code, SCRATCHVAE_ENGINE="quick")
    assert bad.returncode != 0 and "SCRATCHVAE_ENGINE: expected one of" in bad.stderr


def test_every_fast_module_registers_only_names_the_reference_defines():
    # a fast kernel registered under a misspelt name would never run: refuse that state
    table = engine.kernels()  # loads every fast module
    assert set(engine._FAST) <= set(table), sorted(set(engine._FAST) - set(table))
