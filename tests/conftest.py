"""Hypothesis profiles: ``ci`` (derandomised, few examples; the default) and ``thorough``.

    HYPOTHESIS_PROFILE=thorough python -m pytest
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

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
