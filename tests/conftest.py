"""Hypothesis profiles: ``ci`` (derandomised, few examples; the default) and ``thorough``.

    HYPOTHESIS_PROFILE=thorough python -m pytest

The optional extras: ``@pytest.mark.needs("matplotlib")`` skips a test, saying which extra to
install, when a module it needs is missing, so the suite passes on a core install
(``pip install . pytest hypothesis``); the fixture ``installed("matplotlib")`` says whether a
module is there, for a test that checks its numbers either way and its figures only with it.

The engines: the fixture ``engine`` runs a test once under each engine of ``scratchvae.engine``
(``"reference"``, ``"fast"``), with that engine in force for the whole test.
"""

import importlib.util
import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from scratchvae import engine as switch  # the switch alone: no engine module, no model

settings.register_profile(
    "ci", max_examples=10, derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=300, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


#: The smallest train-flow run the command-line tests train on (seconds)
TINY_FLOW_ARGS = ["--layers", "2", "--hidden", "8,8", "--steps", "6", "--batch", "64",
                  "--n-train", "300", "--quiet", "--no-figures"]


@pytest.fixture(scope="module")
def tiny_flow_run(tmp_path_factory):
    """A finished tiny train-flow run directory, trained once per test module."""
    from scratchvae.cli import app as cli

    out = tmp_path_factory.mktemp("runs") / "flow"
    assert cli.main(["train-flow", *TINY_FLOW_ARGS, "--out", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------- optional extras
#: The optional modules tests use -> (the package pip installs, the extra of setup.cfg that
#: brings it). The core install is NumPy and SciPy; everything here is optional.
EXTRAS = {
    "matplotlib": ("matplotlib", "plot"),
    "sklearn": ("scikit-learn", "examples"),
    "tqdm": ("tqdm", "examples"),
    "jupytext": ("jupytext", "notebooks"),
    "nbformat": ("nbformat", "notebooks"),
    "nbclient": ("nbclient", "notebooks"),
    "ipykernel": ("ipykernel", "notebooks"),
}


def is_installed(module: str) -> bool:
    """Whether ``module`` can be found here. Found, not imported: an installed but broken
    package fails the tests that need it instead of skipping them."""
    return importlib.util.find_spec(module) is not None


def needs_reason(modules) -> str | None:
    """Why a test that needs ``modules`` skips here (which extra to install), or None."""
    missing = [m for m in modules if not is_installed(m)]
    if not missing:
        return None
    packages = ", ".join(EXTRAS[m][0] for m in missing)
    extras = ",".join(dict.fromkeys(EXTRAS[m][1] for m in missing))
    return f'needs {packages}: pip install "scratchvae[{extras}]"'


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs(*modules): skip, naming the extra to install, when one of these "
        f"optional modules is missing ({', '.join(EXTRAS)})")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("needs"):
            unknown = [m for m in mark.args if m not in EXTRAS]
            if unknown:  # a typo would skip the test for good
                raise pytest.UsageError(f"{item.nodeid}: needs {unknown}: not optional "
                                        f"modules ({', '.join(EXTRAS)})")
            reason = needs_reason(mark.args)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def installed():
    """``installed("matplotlib")``: whether an optional module is there (``EXTRAS``)."""
    def installed(module):
        if module not in EXTRAS:
            raise ValueError(f"module: {module!r} is not an optional module ({', '.join(EXTRAS)})")
        return is_installed(module)
    return installed


# ----------------------------------------------------------------------------- engines
@pytest.fixture(params=switch.ENGINES)
def engine(request):
    """Runs the test under ``scratchvae.engine.using(name)`` for each engine of
    ``scratchvae.engine.ENGINES`` (``"reference"``, ``"fast"``); the value is the engine's name.
    The engine in force before is restored after."""
    with switch.using(request.param):
        yield request.param


# ----------------------------------------------------------------------------- threads
@pytest.fixture
def in_two_threads():
    """``run(call, repeats=30)``: ``call(i)`` ``repeats`` times in each of two threads started
    together (``i`` = 0 and 1; the engine switch is the process's, so the test's engine);
    returns ``{i: the set of what call(i) returned}`` (a call that raised leaves its thread's
    set short)."""
    def run(call, repeats=30):
        results, barrier = {0: set(), 1: set()}, threading.Barrier(2)

        def worker(i):
            barrier.wait()
            for _ in range(repeats):
                results[i].add(call(i))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results
    return run


# ----------------------------------------------------------------------------- fused steps
@pytest.fixture
def assert_gradients_are_the_callers():
    """``check(first, kept, second)``: a fused step's gradients are new arrays each step. The
    gradients ``first`` of one step still equal ``kept`` (copies taken before a second step,
    whose gradients are ``second``): the second step's work buffers did not overwrite them;
    none shares memory with ``second``, and no two of ``second`` share memory."""
    def check(first, kept, second):
        for name, g in first.items():
            np.testing.assert_array_equal(g, kept[name], err_msg=name)
            assert not np.shares_memory(g, second[name]), name
        arrays = list(second.values())
        assert not any(np.shares_memory(a, b)
                       for i, a in enumerate(arrays) for b in arrays[i + 1:])
    return check
