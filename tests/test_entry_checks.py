"""Bad input at the public entry points of every bijector and density (issue 15, item 9).

The check lives once, in ``Bijector.forward``/``inverse`` (``checks.check_points``), which call
the subclass' ``_forward``/``_inverse``; a ``Chain`` checks its input once and calls its
members' unchecked passes.
"""

import numpy as np
import pytest

from scratchvae.checks.randomize import randomize_conditioners
from scratchvae.flows import bijector as bijector_module
from scratchvae.flows.bijector import Chain, Inverse
from scratchvae.flows.coupling import CouplingBlock, coupling_flow
from scratchvae.flows.elementwise import ElementwiseAffine, Logit, Sigmoid
from scratchvae.flows.linear import ActNorm, LULinear, Permutation
from scratchvae.flows.planar import Planar
from scratchvae.flows.radial import Radial
from scratchvae.models.density import FlowDensity, StandardNormal


def every_bijector():
    rng = np.random.default_rng(0)
    return {
        "Permutation": Permutation([2, 0, 1]),
        "ActNorm": ActNorm(3),
        "LULinear": LULinear(3, rng),
        "ElementwiseAffine": ElementwiseAffine(3),
        "Planar": Planar(3, rng),
        "Radial": Radial(3, rng),
        "CouplingBlock": CouplingBlock(3, rng=rng),
        "Chain": coupling_flow(3, 2, rng=rng),
        "Inverse": Inverse(LULinear(3, rng)),
    }


@pytest.mark.parametrize("name", sorted(every_bijector()))
@pytest.mark.parametrize("direction,arg", [("forward", "u"), ("inverse", "x")])
def test_wrong_width_names_the_argument_and_the_expected_shape(name, direction, arg):
    b = every_bijector()[name]
    with pytest.raises(ValueError, match=rf"^{arg}: expected shape \(N, 3\), got \(2, 4\)"):
        getattr(b, direction)(np.zeros((2, 4)))


def test_coupling_block_with_one_column_too_many_is_refused():
    # the reported case: the extra column used to pass through unchanged
    with pytest.raises(ValueError, match=r"u: expected shape \(N, 3\), got \(2, 4\)"):
        CouplingBlock(3).forward(np.ones((2, 4)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_int_input_is_converted_to_the_module_dtype_and_round_trips(dtype):
    rng = np.random.default_rng(1)
    block = CouplingBlock(3, rng=rng, dtype=dtype)
    randomize_conditioners(block, rng, 0.5)
    u = np.array([[1, -2, 3], [0, 4, -1]])
    x, logdet, _ = block.forward(u)
    assert x.dtype == logdet.dtype == dtype
    back, _, _ = block.inverse(x)
    np.testing.assert_allclose(back, u, atol=1e-5 if dtype == np.float32 else 1e-12)


def test_int_input_to_a_parameter_free_bijector_becomes_float64():
    x, _, _ = Permutation([1, 0]).forward(np.array([[1, 2]]))
    assert x.dtype == np.float64


def test_one_dimensional_input_is_refused():
    with pytest.raises(ValueError, match=r"u: expected shape \(N, 3\), got \(3,\)"):
        Planar(3).forward(np.zeros(3))


def test_three_dimensional_input_is_refused():
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 3\), got \(2, 2, 3\)"):
        Radial(3).inverse(np.zeros((2, 2, 3)))


def test_flat_list_input_is_refused():
    with pytest.raises(ValueError, match=r"u: expected shape \(N, 3\), got \(3,\)"):
        ElementwiseAffine(3).forward([1.0, 2.0, 3.0])


def test_nested_list_of_the_right_shape_is_converted():
    x, _, _ = ElementwiseAffine(3).forward([[1, 2, 3]])
    np.testing.assert_array_equal(x, [[1.0, 2.0, 3.0]])


def test_string_input_is_refused():
    with pytest.raises(ValueError, match=r"u: expected a real array of shape \(N, 3\), got a "
                                         r"string"):
        CouplingBlock(3).forward("1, 2, 3")


def test_object_input_is_refused():
    with pytest.raises(ValueError, match=r"x: expected a real array of shape \(N, 3\), got "
                                         r"dtype object"):
        LULinear(3).inverse(np.array([[1, None, 3]], dtype=object))


def test_non_finite_input_is_refused():
    with pytest.raises(ValueError, match="u: expected finite values, got nan or inf"):
        ActNorm(2).forward(np.array([[0.0, np.nan]]))


def test_elementwise_bijector_of_any_width_refuses_1d():
    Sigmoid().forward(np.zeros((2, 5)))  # any width is fine
    with pytest.raises(ValueError, match=r"x: expected shape \(N, D\), got \(5,\)"):
        Logit().inverse(np.zeros(5))


def test_context_with_the_wrong_number_of_rows_is_refused():
    block = CouplingBlock(3, context_dim=2)
    with pytest.raises(ValueError, match=r"context: expected shape \(4, D\), got \(3, 2\)"):
        block.forward(np.zeros((4, 3)), np.zeros((3, 2)))


def test_chain_checks_once_and_not_in_its_members(monkeypatch):
    calls = []
    real = bijector_module.check_points

    def counting(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(bijector_module, "check_points", counting)
    flow = Chain([ElementwiseAffine(2), Permutation([1, 0]), ElementwiseAffine(2)])
    flow.forward(np.zeros((5, 2)))
    flow.inverse(np.zeros((5, 2)))
    assert calls == ["u", "x"]


def test_flow_density_log_prob_of_no_points_is_empty():
    model = FlowDensity(StandardNormal(2), coupling_flow(2, 2), 2)
    logp = model.log_prob(np.zeros((0, 2)))
    assert logp.shape == (0,) and logp.dtype == model.dtype
    assert model.transform(np.zeros((0, 2))).shape == (0, 2)


def test_flow_density_wrong_width_names_x():
    model = FlowDensity(StandardNormal(2), coupling_flow(2, 2), 2)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 2\), got \(0, 3\)"):
        model.log_prob(np.zeros((0, 3)))


def test_flow_density_int_points_are_converted():
    model = FlowDensity(StandardNormal(2), coupling_flow(2, 2), 2)
    np.testing.assert_array_equal(model.log_prob(np.array([[1, 2]])),
                                  model.log_prob(np.array([[1.0, 2.0]])))


def test_standard_normal_log_prob_refuses_a_string():
    with pytest.raises(ValueError, match="z: expected a real array"):
        StandardNormal(2).log_prob("0 0")
