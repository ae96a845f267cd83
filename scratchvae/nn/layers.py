"""Networks by hand: the parameter tree (Module), the layer contract (Layer), Linear,
activations and the MLP.

Every layer is a pair of passes with no hidden state between them
(derivations/00-conventions.md#the-forward-cache-backward-contract):

    y, cache = layer.forward(x)
    d_in, grads = layer.backward(d_out, cache)   # grads keyed like layer.params

Arrays are batch-first, ``(N, D)``. Each activation's local derivative sits right next
to its forward; the derivations are in derivations/01-linear-and-mlp.md.
"""

from __future__ import annotations

import functools

import numpy as np

from ..checks.arguments import rng_or_default
from ..engine.activations import inplace_passes

__all__ = [
    "Module",
    "Layer",
    "Linear",
    "Tanh",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Softplus",
    "Sigmoid",
    "Identity",
    "MLP",
    "ACTIVATIONS",
    "make_activation",
    "softplus",
    "softplus_fast",
    "sigmoid",
    "log_sigmoid",
    "soft_clip",
    "sum_over_batch",
    "sum_over_features",
    "ones_vector",
    "matmul",
]


# ----------------------------------------------------------------------------- stable scalars
def softplus(x):
    """log(1 + e^x) without overflow: ``logaddexp(0, x)``. Derivative: sigmoid(x).

    derivations/01-linear-and-mlp.md#activations ("Stable forms"). (A hot path that needs it
    faster and can live with a last-bit difference uses ``softplus_fast``.)
    """
    return np.logaddexp(0.0, x)


def softplus_fast(x):
    """``softplus`` written out as ``max(x, 0) + log1p(e^{-|x|})``, the formula ``logaddexp``
    uses: only ``e^{-|x|} <= 1`` is formed, so it is as stable.

    Speed: NumPy's ``logaddexp`` ufunc runs a scalar loop, ~8x slower than these four
    vectorised passes. The two agree to float rounding but not always to the last bit, so
    code that relies on an exact value (an identity initialisation that must give exactly 1)
    keeps ``softplus``. derivations/01-linear-and-mlp.md#activations ("Stable forms").
    """
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def sigmoid(x):
    """1 / (1 + e^-x), stable for any finite x: never forms e^{+large}.

    Written as ``e^{min(x, 0)} / (1 + e^{-|x|})``: for x >= 0 that is 1 / (1 + e^-x), for
    x < 0 it is e^x / (1 + e^x), the same number. Both exponents are <= 0, so nothing
    overflows and small values keep their relative accuracy (as scipy's ``expit``, which
    this replaces for speed: ~2x faster).
    derivations/01-linear-and-mlp.md#activations ("Stable forms").
    """
    return np.exp(np.minimum(x, 0)) / (1.0 + np.exp(-np.abs(x)))


def log_sigmoid(x):
    """log sigmoid(x) = -softplus(-x), stable for any finite x."""
    return -softplus(-x)


def soft_clip(raw, bound):
    """``bound * tanh(raw / bound)`` and its slope ``1 - tanh^2``: a smooth clip to
    ``(-bound, bound)`` that equals ``raw`` to first order at 0.

    The one home of the tanh bound; each use names its own guard and says why it needs one
    (``flows.coupling.bounded_log_scale``, ``flows.combination.bounded_coefficients``,
    ``distributions.bases.bounded_log_std``).
    Derivation: derivations/07-coupling.md#bounding-the-log-scale.
    """
    th = np.tanh(raw / bound)
    return bound * th, 1.0 - th * th


# ----------------------------------------------------------------------------- fast sums
def sum_over_batch(a):
    """Sum of an ``(N, D)`` array over its rows (the batch axis): ``(D,)``.

    Speed: computed as the matrix-vector product ``ones(N) @ a`` (one BLAS gemv), 3-10x
    faster than ``a.sum(axis=0)``, which NumPy reduces row by row, and at least as accurate.
    """
    return ones_vector(a.shape[0], a.dtype) @ a


def sum_over_features(a):
    """Sum of a ``(..., D)`` array over its last axis: ``(...)``.

    Speed: computed as ``a @ ones(D)`` (BLAS gemv). NumPy's ``a.sum(axis=-1)`` pays a
    per-row overhead when ``D`` is short (8 or 64 features), 5-8x slower here.
    """
    return a @ ones_vector(a.shape[-1], a.dtype)


@functools.lru_cache(maxsize=256)
def ones_vector(n, dtype):
    """A read-only vector of ``n`` ones in ``dtype``, made once per size and dtype.

    Speed: the sums above run on the same few sizes every step, and ``np.ones`` (a Python
    function) costs about 2 us a call, as much as the product itself on a small batch.
    """
    ones = np.ones(int(n), dtype=dtype)
    ones.flags.writeable = False
    return ones


# ----------------------------------------------------------------------------- products
def matmul(a, b):
    """``a @ b`` of two 2-D arrays, always computed by BLAS: ``(N, K) @ (K, M) -> (N, M)``.

    Speed: ``np.matmul`` hands the product to BLAS without first filling the result with
    zeros, as ``np.dot`` does (a whole extra pass over the output, which BLAS then
    overwrites), but it does not hand BLAS a product with a dimension of 1: the first layer of
    a 2-D coupling conditioner, ``(512, 1) @ (1, 64)``, took 48 us with ``np.matmul`` and 10 us
    with ``np.dot``. So: ``np.dot`` where a dimension is 1, ``np.matmul`` elsewhere. Both give
    the product; ``benchmarks/README.md`` has the measurements.
    """
    if a.shape[0] == 1 or a.shape[1] == 1 or b.shape[1] == 1:
        return np.dot(a, b)
    return np.matmul(a, b)


# ----------------------------------------------------------------------------- the tree
class Module:
    """The parameter tree, and nothing else: own parameters, named children, dotted names.

    ``module.params`` is a flat dict of *references* to the parameter arrays of the whole
    tree, keyed by dotted names (``"layers.0.W"``); optimisers update these arrays in place,
    and every backward pass returns its gradients in a dict with the same keys. A ``Module``
    has no passes of its own: what it computes is the business of the contract it implements
    (``Layer`` here, ``Bijector``, ``Density``, ``Likelihood``; docs/design.md lists them).
    """

    def __init__(self):
        self._own: dict[str, np.ndarray] = {}
        self._children: dict[str, Module] = {}

    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        if "." in name:
            raise ValueError(f"parameter name {name!r} must not contain '.'")
        self._own[name] = value
        return value

    def add_child(self, name: str, module: Module) -> Module:
        self._children[name] = module
        return module

    @property
    def params(self) -> dict[str, np.ndarray]:
        out = dict(self._own)
        for cname, child in self._children.items():
            for pname, p in child.params.items():
                out[f"{cname}.{pname}"] = p
        return out

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def load_params(self, values: dict[str, np.ndarray]) -> None:
        """Copy ``values`` into the existing arrays (in place, so optimisers keep their refs)."""
        mine = self.params
        missing = set(mine) - set(values)
        if missing:
            raise ValueError(f"values: missing parameters {sorted(missing)}")
        for k, p in mine.items():
            v = np.asarray(values[k])
            if v.shape != p.shape:
                raise ValueError(f"values[{k!r}]: expected shape {p.shape}, got {v.shape}")
            p[...] = v

    def copy_params(self) -> dict[str, np.ndarray]:
        return {k: p.copy() for k, p in self.params.items()}

    @staticmethod
    def prefixed(prefix: str, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A child's grads under this module's dotted names."""
        return {f"{prefix}.{k}": v for k, v in grads.items()}


# ----------------------------------------------------------------------------- the layer contract
class Layer(Module):
    """The layer contract: one input, one output, a cache between the two passes.

        y, cache = layer.forward(x)                 # x (N, n_in) -> y (N, n_out)
        d_in, grads = layer.backward(d_out, cache)  # grads keyed like layer.params

    ``backward`` returns the gradient of ``<d_out, y>`` with respect to ``x`` and to every
    parameter; it reads only the cache, never recomputes the forward pass.
    Contract: derivations/00-conventions.md#the-forward-cache-backward-contract.
    """

    def forward(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, d_out, cache):  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)[0]


# ----------------------------------------------------------------------------- linear
class Linear(Layer):
    """Affine map y = x W + b.

    Shapes: x (N, n_in), W (n_in, n_out), b (n_out,), y (N, n_out).
    Derivation: derivations/01-linear-and-mlp.md#linear-layer.

    ``init``: ``"glorot"`` (uniform, Var = 2/(n_in+n_out), for tanh/sigmoid),
    ``"he"`` (normal, Var = 2/n_in, for the ReLU family), or ``"zeros"`` (the output
    layer of a conditioner that must start as the identity).
    """

    def __init__(self, n_in, n_out, rng=None, init="glorot", dtype=np.float64):
        super().__init__()
        if int(n_in) < 1 or int(n_out) < 1:
            raise ValueError(f"n_in, n_out: expected positive sizes, got {n_in}, {n_out}")
        rng = rng_or_default(rng)
        self.n_in, self.n_out, self.dtype = int(n_in), int(n_out), np.dtype(dtype)
        if init == "glorot":
            limit = np.sqrt(6.0 / (n_in + n_out))
            W = rng.uniform(-limit, limit, size=(n_in, n_out))
        elif init == "he":
            W = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out))
        elif init == "zeros":
            W = np.zeros((n_in, n_out))
        else:
            raise ValueError(f"init: expected 'glorot', 'he' or 'zeros', got {init!r}")
        self.W = self.add_param("W", W.astype(self.dtype))
        self.b = self.add_param("b", np.zeros(n_out, dtype=self.dtype))

    # (``matmul`` is ``x @ W``, always through BLAS: see its docstring)
    def forward(self, x):
        y = matmul(x, self.W)
        y += self.b
        return y, x

    def backward(self, dy, cache):
        x = cache
        # y = xW + b:  dL/dx = dy W^T,  dL/dW = x^T dy,  dL/db = sum_n dy
        return matmul(dy, self.W.T), {"W": matmul(x.T, dy), "b": sum_over_batch(dy)}


# ----------------------------------------------------------------------------- activations
class Identity(Layer):
    """y = x; dy/dx = 1."""

    def forward(self, x):
        return x, None

    def backward(self, dy, cache):
        return dy, {}


class Tanh(Layer):
    """y = tanh(x); dy/dx = 1 - y^2 (derivations/01-linear-and-mlp.md#activations)."""

    def forward(self, x):
        y = np.tanh(x)
        return y, y

    def backward(self, dy, cache):
        y = cache
        return dy * (1.0 - y * y), {}


class ReLU(Layer):
    """y = max(x, 0); dy/dx = [x > 0] (derivations/01-linear-and-mlp.md#activations)."""

    def forward(self, x):
        return np.maximum(x, 0), x > 0

    def backward(self, dy, cache):
        return dy * cache, {}


class LeakyReLU(Layer):
    """y = x if x > 0 else a x; dy/dx = 1 or a (derivations/01-linear-and-mlp.md#activations)."""

    def __init__(self, slope=0.01):
        super().__init__()
        self.slope = float(slope)

    def forward(self, x):
        positive = x > 0
        return np.where(positive, x, self.slope * x), positive

    def backward(self, dy, cache):
        return np.where(cache, dy, self.slope * dy), {}


class ELU(Layer):
    """y = x if x > 0 else a (e^x - 1); dy/dx = 1 or y + a.

    Guard: ``expm1`` of ``min(x, 0)``, so large positive inputs never reach exp.
    Derivation: derivations/01-linear-and-mlp.md#activations.
    """

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x):
        y = np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))
        return y, (x > 0, y)

    def backward(self, dy, cache):
        positive, y = cache
        return np.where(positive, dy, dy * (y + self.alpha)), {}


class Softplus(Layer):
    """y = log(1 + e^x); dy/dx = sigmoid(x) (derivations/01-linear-and-mlp.md#activations)."""

    def forward(self, x):
        return softplus(x), x

    def backward(self, dy, cache):
        return dy * sigmoid(cache), {}


class Sigmoid(Layer):
    """y = 1/(1+e^-x); dy/dx = y (1 - y) (derivations/01-linear-and-mlp.md#activations)."""

    def forward(self, x):
        y = sigmoid(x)
        return y, y

    def backward(self, dy, cache):
        y = cache
        return dy * y * (1.0 - y), {}


ACTIVATIONS = {
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "elu": ELU,
    "softplus": Softplus,
    "sigmoid": Sigmoid,
    "identity": Identity,
}


def make_activation(name: str) -> Module:
    try:
        return ACTIVATIONS[name.replace("-", "_")]()
    except (KeyError, AttributeError):
        raise ValueError(
            f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}"
        ) from None


# ----------------------------------------------------------------------------- MLP
class MLP(Layer):
    """Multilayer perceptron: Linear -> act -> ... -> Linear (no activation on the output).

    ``sizes = [n_in, h_1, ..., n_out]``. Shapes: x (N, n_in) -> y (N, n_out).
    Parameters are ``layers.{i}.W`` and ``layers.{i}.b``.
    ``zero_last=True`` zero-initialises the output layer (a conditioner that starts as the
    identity coupling). Derivation: derivations/01-linear-and-mlp.md#the-mlp-chain-rule.
    """

    def __init__(self, sizes, activation="tanh", rng=None, dtype=np.float64, zero_last=False):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes: expected at least two positive sizes, got {sizes}")
        rng = rng_or_default(rng)
        self.sizes, self.dtype = sizes, np.dtype(dtype)
        self.activation_name = activation
        self.act = make_activation(activation)
        relu_like = activation.replace("-", "_") in ("relu", "leaky_relu", "elu")
        self.layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            if last:
                init = "zeros" if zero_last else "glorot"
            else:
                init = "he" if relu_like else "glorot"
            self.layers.append(self.add_child(f"layers.{i}", Linear(a, b, rng, init, dtype)))
        # speed: the hidden activations run in place on the MLP's own arrays (the kernels of
        # scratchvae.engine.activations; the plain passes above are their reference)
        self._act_forward, self._act_backward = inplace_passes(self.act)

    def forward(self, x):
        caches = []
        h = x
        for i, layer in enumerate(self.layers):
            h, c_lin = layer.forward(h)
            c_act = None
            if i < len(self.layers) - 1:
                # h is the Linear's fresh output, owned here: the activation may overwrite it
                h, c_act = self._act_forward(h)
            caches.append((c_lin, c_act))
        return h, caches

    def backward(self, dy, cache):
        grads = {}
        d = dy
        for i in range(len(self.layers) - 1, -1, -1):
            c_lin, c_act = cache[i]
            if i < len(self.layers) - 1:
                # d is the fresh input gradient of layer i+1 (never the caller's dy)
                d = self._act_backward(d, c_act)
            d, g = self.layers[i].backward(d, c_lin)
            grads[f"layers.{i}.W"] = g["W"]
            grads[f"layers.{i}.b"] = g["b"]
        return d, grads
