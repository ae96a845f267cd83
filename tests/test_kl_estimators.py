"""The KL estimators of a flow posterior as pure pairs (scratchvae.models.kl_estimators).

Each pair is checked alone, with the fields of a ``PosteriorSample`` as independent inputs
(the posterior step's chain rule through the flow and the reparameterisation is checked by
the whole-ELBO tests in test_flow_vae.py).
"""

import numpy as np
import pytest

from scratchvae.checks import gradcheck, testing
from scratchvae.models.kl_estimators import (
    KL_ESTIMATOR_PAIRS,
    KL_ESTIMATORS,
    PosteriorSample,
    add_paths,
    closed_form_weight,
)


def random_sample(rng, S=2, N=3, L=2):
    """Fields far from any special point; sigma on both sides of 1, so the closed-form weight
    of ``"analytic_base"`` is 1 for some dimensions and 1/sigma^2 (with a slope) for others."""
    sigma = np.array([[0.6, 1.7], [1.4, 0.8], [2.2, 0.5]])[:N, :L]
    return {"eps": rng.standard_normal((S, N, L)), "mu": rng.standard_normal((N, L)),
            "sigma": sigma, "log_sigma": rng.standard_normal((N, L)),
            "z0": rng.standard_normal((S, N, L)), "zK": rng.standard_normal((S, N, L)),
            "logdet": rng.standard_normal((S, N)), "log_q": rng.standard_normal((S, N))}


@pytest.mark.parametrize("name", KL_ESTIMATORS)
def test_estimator_pair_backward_against_finite_differences(name, rng):
    forward, backward = KL_ESTIMATOR_PAIRS[name]
    fields = random_sample(rng)
    arrays = {k: v for k, v in fields.items() if k != "eps"}  # eps is noise, not an input

    def run():
        return forward(PosteriorSample(**fields))

    def grads(douts):
        paths = backward(douts[0], run()[1])
        return {k: add_paths(None, paths, k) for k in arrays}

    testing.assert_checks_pass(gradcheck.check_vjp(
        name, arrays, lambda: run()[0], grads, rng, tol=1e-7))


@pytest.mark.parametrize("name", KL_ESTIMATORS)
def test_estimator_returns_one_group_per_example(name, rng):
    kl, _ = KL_ESTIMATOR_PAIRS[name][0](PosteriorSample(**random_sample(rng)))
    assert kl.shape == (3, 1)


def test_the_default_estimator_is_first_in_the_table():
    assert KL_ESTIMATORS[0] == "analytic_base" and tuple(KL_ESTIMATOR_PAIRS) == KL_ESTIMATORS


def test_analytic_base_lists_both_paths_to_sigma(rng):
    # sigma reaches the term through the closed-form KL and through the weight c(sigma); the
    # posterior step adds the two in this order (which keeps training bit-identical)
    forward, backward = KL_ESTIMATOR_PAIRS["analytic_base"]
    paths = backward(np.ones((3, 1)), forward(PosteriorSample(**random_sample(rng)))[1])
    assert [name for name, _ in paths].count("sigma") == 2


def test_add_paths_adds_in_order_from_a_start():
    paths = [("a", np.array(1.0)), ("b", np.array(5.0)), ("a", np.array(2.0))]
    assert add_paths(None, paths, "a") == 3.0
    assert add_paths(np.array(10.0), paths, "a") == 13.0
    assert add_paths(None, paths, "c") is None


def test_closed_form_weight_is_one_up_to_sigma_one_then_inverse_square():
    c, dc = closed_form_weight(np.array([0.5, 1.0, 2.0]))
    np.testing.assert_array_equal(c, [1.0, 1.0, 0.25])
    np.testing.assert_array_equal(dc, [0.0, 0.0, -0.25])
