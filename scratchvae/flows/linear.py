"""Linear bijectors: permutations, ActNorm and the LU-parametrised invertible linear map.

Direction convention (as everywhere in scratchvae): ``forward`` is the *generative* direction
u -> x (base to data), ``inverse`` the *normalising* direction x -> u.

    Permutation(perm)     x = u[:, perm]                       log-det 0
    ActNorm(dim)          x = u * exp(log_scale) + shift       log-det sum(log_scale)
    LULinear(dim)         x = W u + bias,  W = P L U           log-det sum(log diag U)

Every log-det here is the same for all inputs: a linear map stretches all of space alike.
None of them uses a context; each accepts ``context`` and returns ``d_context = None``.
Derivations: derivations/09-linear-bijectors.md.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.linalg import solve_triangular

from ..checks.arguments import check_count, check_rng, rng_or_default
from ..nn import sigmoid, softplus
from .bijector import Bijector, Cache
from .elementwise import ElementwiseAffine

__all__ = ["Permutation", "ActNorm", "LULinear", "ACTNORM_MIN_STD", "LU_MIN_DIAGONAL"]

#: Floor on the per-dimension standard deviation ActNorm.initialize divides by.
ACTNORM_MIN_STD = 1e-6

#: Smallest diagonal entry of U in LULinear (diag = softplus(raw_diag) + LU_MIN_DIAGONAL).
LU_MIN_DIAGONAL = 1e-3


# ----------------------------------------------------------------------------- permutation
class Permutation(Bijector):
    """Reorder the dimensions: ``x = u[:, perm]``, i.e. ``x_i = u_{perm[i]}``.

    forward (generative u -> x): ``x = u[:, perm]``; inverse (normalising x -> u):
    ``u = x[:, inverse_perm]``. Both log-dets are exactly 0 (``|det P| = 1``): volume
    preserving, no parameters. Shapes ``(N, D)`` with ``D = len(perm)``.
    ``Permutation.reverse(dim)`` and ``Permutation.random(dim, rng)`` build the usual two.
    ``context`` is accepted and ignored.
    Derivation: derivations/09-linear-bijectors.md#permutations.
    """

    volume_preserving = True

    def __init__(self, perm):
        super().__init__()
        self.perm = self._check_perm(perm)
        self.inverse_perm = np.argsort(self.perm)
        self.dim = self.perm.size

    @staticmethod
    def _check_perm(perm):
        p = np.asarray(perm)
        if p.ndim != 1 or p.size == 0 or not np.issubdtype(p.dtype, np.integer):
            raise ValueError(f"perm: expected a non-empty 1-D array of integers, got {perm!r}")
        if not np.array_equal(np.sort(p), np.arange(p.size)):
            raise ValueError(
                f"perm: expected each of 0..{p.size - 1} exactly once, got {p.tolist()}")
        return p.astype(np.intp)

    @classmethod
    def reverse(cls, dim):
        """``perm = [dim-1, ..., 1, 0]``: between two couplings every dimension changes half.

        Derivation: derivations/09-linear-bijectors.md#permutations.
        """
        return cls(np.arange(check_count(dim, "dim"))[::-1])

    @classmethod
    def random(cls, dim, rng):
        """A permutation drawn from ``rng`` (the same seed gives the same permutation).

        Derivation: derivations/09-linear-bijectors.md#permutations.
        """
        return cls(check_rng(rng).permutation(check_count(dim, "dim")))

    def _forward(self, u, context=None):
        return u[:, self.perm], np.zeros(u.shape[0], dtype=u.dtype), Cache("forward", None)

    def _inverse(self, x, context=None):
        return x[:, self.inverse_perm], np.zeros(x.shape[0], dtype=x.dtype), Cache("inverse", None)

    def backward_forward(self, d_x, d_logdet, data):
        # x = P u  =>  u-bar = P^T x-bar, which undoes the reordering
        return d_x[:, self.inverse_perm], {}, None

    def backward_inverse(self, d_u, d_logdet, data):
        return d_u[:, self.perm], {}, None


# ----------------------------------------------------------------------------- actnorm
def _floored_std(x):
    """Per-column standard deviation, at least ``ACTNORM_MIN_STD``.

    WHY: ``initialize`` sets ``log_scale = log(std)`` and the inverse divides by ``exp`` of it;
    a constant column (a dead pixel, a one-hot feature that never fires in the batch) has
    std 0, which would give ``log_scale = -inf`` and ``0 * inf = nan`` in the inverse.
    Derivation: derivations/09-linear-bijectors.md#data-dependent-initialisation.
    """
    return np.maximum(x.std(axis=0), ACTNORM_MIN_STD)


class ActNorm(ElementwiseAffine):
    """Activation normalisation (Kingma & Dhariwal 2018, "Glow"): a per-dimension affine map
    whose parameters are first set from data.

    forward (generative u -> x): ``x = u * exp(log_scale) + shift``, log-det ``sum(log_scale)``
    for every sample; inverse (normalising x -> u): ``u = (x - shift) * exp(-log_scale)``.
    The map and its gradients are ``ElementwiseAffine``'s
    (derivations/10-elementwise-bijectors.md#elementwise-affine); what ActNorm adds is the
    explicit ``initialize(x_data)``. Nothing happens behind your back on a first call.
    Shapes: u, x ``(N, dim)``; parameters ``"log_scale"``, ``"shift"`` of shape ``(dim,)``.
    Derivation: derivations/09-linear-bijectors.md#actnorm.
    """

    def initialize(self, x_data):
        """Set the parameters so that ``inverse(x_data)`` has mean 0 and std 1 per dimension.

        ``x_data`` ``(N, dim)`` with ``N >= 2``: the points that reach this layer's *inverse*
        (in a chain, the data pushed through the layers between the data and this one).
        ``shift = mean``, ``log_scale = log(max(std, ACTNORM_MIN_STD))`` (population std).
        Updates the parameter arrays in place and returns ``self``.
        Derivation: derivations/09-linear-bijectors.md#data-dependent-initialisation.
        """
        x = np.asarray(x_data)
        if x.ndim != 2 or x.shape[1] != self.dim or x.shape[0] < 2:
            raise ValueError(
                f"x_data: expected shape (N >= 2, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x_data: expected finite values, got nan or inf")
        x = x.astype(np.float64)  # statistics in float64, stored in the parameters' dtype
        self.shift[...] = x.mean(axis=0)
        self.log_scale[...] = np.log(_floored_std(x))
        return self


# ----------------------------------------------------------------------------- LU linear
def _positive_diagonal(raw_diag):
    """The diagonal of U: ``softplus(raw_diag) + LU_MIN_DIAGONAL``; derivative sigmoid(raw).

    WHY: ``log det W = sum log u_ii`` needs ``u_ii > 0``, and the inverse divides by ``u_ii``
    in the triangular solve. Softplus alone can round to exactly 0 (``softplus(-800) = 0``),
    which makes W singular, the log-det ``-inf`` and the inverse ``inf``; the floor keeps W
    invertible. Softplus rather than exp: a large raw value grows the scale linearly.
    Derivation: derivations/09-linear-bijectors.md#lu-parametrisation.
    """
    return softplus(raw_diag) + LU_MIN_DIAGONAL


def _softplus_inverse(y):
    """``r`` with ``softplus(r) = y`` for ``y > 0``: ``log(e^y - 1) = y + log(1 - e^-y)``."""
    return y + np.log(-np.expm1(-y))


def _random_rotation_lu(dim, rng):
    """P, L, U of a random orthogonal matrix, U's diagonal made positive (Glow's initialisation).

    A Gaussian matrix's QR gives an orthogonal Q; ``scipy.linalg.lu`` factors ``Q = P L U``.
    Flipping the sign of the columns of U with a negative diagonal multiplies Q by a diagonal
    of signs from the right, which keeps it orthogonal. Returns ``perm`` (``P = I[perm]``),
    ``L`` and ``U`` as float64 arrays.
    """
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.sign(np.diag(r))  # uniformly random (Haar), not a QR artefact
    p, lower, upper = scipy.linalg.lu(q)  # q = p @ lower @ upper
    upper = upper * np.sign(np.diag(upper))  # column j times sign(u_jj): u_jj > 0
    return np.argmax(p, axis=1), lower, upper  # row i of p is the unit vector e_{perm[i]}


class LULinear(Bijector):
    """An invertible linear map ``x = W u + bias`` with ``W = P L U`` (Kingma & Dhariwal 2018).

    forward (generative u -> x): ``x = W u + bias`` per sample; for a batch of rows,
    ``x = u @ W.T + bias``, evaluated as ``a = u U^T``, ``h = a L^T``, ``x = h[:, perm] + bias``.
    inverse (normalising x -> u): ``y = (x - bias)[:, inverse_perm]``, then two triangular
    solves ``L h = y`` and ``U u = h`` (``scipy.linalg.solve_triangular``, never a general
    inverse): O(D^2) per sample.
    log-det: forward ``sum_i log u_ii``, inverse ``-sum_i log u_ii``; the same for every input
    (but not 0, so ``volume_preserving`` is False).

    Factors: P a fixed permutation (``perm``, not a parameter); L unit lower triangular from
    the strictly-lower part of parameter ``"lower"`` (D, D); U upper triangular with the
    strictly-upper part of ``"upper"`` (D, D) and the diagonal ``softplus(raw_diag) +
    LU_MIN_DIAGONAL`` from ``"raw_diag"`` (D,); ``"bias"`` (D,). Entries of ``lower`` and
    ``upper`` outside their triangle are unused and their gradients are 0.

    Initialisation: a random orthogonal matrix from ``rng`` (default
    ``np.random.default_rng(0)``), as in Glow: log-det 0. ``identity_init=True``: P, L, U = I
    and bias 0, exactly.
    ``context`` is accepted and ignored.
    Derivation: derivations/09-linear-bijectors.md#lu-parametrisation.
    """

    def __init__(self, dim, rng=None, dtype=np.float64, identity_init=False):
        super().__init__()
        self.dim = D = check_count(dim, "dim")
        self.dtype = np.dtype(dtype)
        rng = rng_or_default(rng)
        if identity_init:
            perm, lower, upper = np.arange(D), np.zeros((D, D)), np.zeros((D, D))
            # softplus(raw) + floor = 1, computed in the target dtype so it is 1 exactly
            diag = np.ones(D, dtype=self.dtype) - self.dtype.type(LU_MIN_DIAGONAL)
        else:
            perm, lower, upper = _random_rotation_lu(D, rng)
            # a rotation with a diagonal entry below twice the floor is nudged up to it
            diag = np.maximum(np.diag(upper), 2 * LU_MIN_DIAGONAL) - LU_MIN_DIAGONAL
        self.perm = perm.astype(np.intp)
        self.inverse_perm = np.argsort(self.perm)
        self.lower = self.add_param("lower", np.tril(lower, -1).astype(self.dtype))
        self.upper = self.add_param("upper", np.triu(upper, 1).astype(self.dtype))
        self.raw_diag = self.add_param("raw_diag", _softplus_inverse(diag.astype(self.dtype)))
        self.bias = self.add_param("bias", np.zeros(D, dtype=self.dtype))

    # -- the factors, from the parameters
    def _factors(self):
        """``L`` (unit lower), ``U`` (upper, positive diagonal), the diagonal ``d`` of U."""
        eye = np.eye(self.dim, dtype=self.dtype)
        d = _positive_diagonal(self.raw_diag)
        L = np.tril(self.lower, -1) + eye
        U = np.triu(self.upper, 1) + d * eye
        return L, U, d

    def factors(self):
        """The dense factors ``(P, L, U)`` with ``W = P @ L @ U``, each ``(D, D)``.

        ``P = I[perm]``, so ``(P h)_i = h_{perm[i]}``.
        Derivation: derivations/09-linear-bijectors.md#lu-parametrisation.
        """
        L, U, _ = self._factors()
        return np.eye(self.dim, dtype=self.dtype)[self.perm], L, U

    def weight(self):
        """``W = P L U`` ``(D, D)``, the matrix the forward pass applies (``x = W u + bias``).

        Derivation: derivations/09-linear-bijectors.md#lu-parametrisation.
        """
        L, U, _ = self._factors()
        return (L @ U)[self.perm]

    def _logdet(self, z, d, sign):
        return np.full(z.shape[0], sign * np.sum(np.log(d)), dtype=np.result_type(z, d))

    # -- the two passes
    def _forward(self, u, context=None):
        """Generative u -> x: ``x = u @ W.T + bias`` ``(N, D)``, log-det ``sum log d`` ``(N,)``.

        Derivation:
        derivations/09-linear-bijectors.md#why-the-log-determinant-is-a-sum-over-the-diagonal
        """
        L, U, d = self._factors()
        a = u @ U.T                      # a = U u      (per sample, column convention)
        h = a @ L.T                      # h = L a
        x = h[:, self.perm] + self.bias  # x = P h + b
        return x, self._logdet(u, d, 1.0), Cache("forward", (u, a, L, U, d))

    def _inverse(self, x, context=None):
        """Normalising x -> u by two triangular solves ``(N, D)``; log-det ``-sum log d`` ``(N,)``.

        Derivation: derivations/09-linear-bijectors.md#inverting-by-two-triangular-solves.
        """
        L, U, d = self._factors()
        y = (x - self.bias)[:, self.inverse_perm]  # y = P^T (x - b)
        # scipy solves for columns: the batch goes in as (D, N) and comes back transposed
        h = solve_triangular(L, y.T, lower=True, unit_diagonal=True, check_finite=False)
        u = solve_triangular(U, h, lower=False, check_finite=False)
        return u.T, self._logdet(x, d, -1.0), Cache("inverse", (h.T, u.T, L, U, d))

    def _diag_grads(self, dU, d_logdet, d, sign):
        """Gradients of ``raw_diag`` from the diagonal of ``dU`` and the log-det term."""
        d_diag = np.diag(dU) + sign * np.sum(d_logdet) / d
        return d_diag * sigmoid(self.raw_diag)

    def backward_forward(self, d_x, d_logdet, data):
        """``(d_u, grads, None)`` for the forward pass; ``d_x`` ``(N, D)``, ``d_logdet`` ``(N,)``.

        Derivation: derivations/09-linear-bijectors.md#gradients-of-the-forward-direction.
        """
        u, a, L, U, d = data
        d_h = d_x[:, self.inverse_perm]  # x = P h + b:  h-bar = P^T x-bar
        dL = d_h.T @ a                   # h = L a:      L-bar = sum_n h-bar a^T
        d_a = d_h @ L                    #               a-bar = L^T h-bar
        dU = d_a.T @ u                   # a = U u:      U-bar = sum_n a-bar u^T
        d_u = d_a @ U                    #               u-bar = U^T a-bar
        grads = {
            "lower": np.tril(dL, -1),
            "upper": np.triu(dU, 1),
            "raw_diag": self._diag_grads(dU, d_logdet, d, 1.0),
            "bias": d_x.sum(axis=0),
        }
        return d_u, grads, None

    def backward_inverse(self, d_u, d_logdet, data):
        """``(d_x, grads, None)`` for the inverse pass, by two transposed triangular solves.

        Derivation: derivations/09-linear-bijectors.md#gradients-through-the-triangular-solves.
        """
        h, u, L, U, d = data
        # u = U^{-1} h:  h-bar = U^{-T} u-bar (a solve with U^T),  U-bar = -sum_n h-bar u^T
        d_h = solve_triangular(U, d_u.T, lower=False, trans="T", check_finite=False)
        dU = -(d_h @ u)
        # h = L^{-1} y:  y-bar = L^{-T} h-bar,  L-bar = -sum_n y-bar h^T
        d_y = solve_triangular(L, d_h, lower=True, unit_diagonal=True, trans="T",
                               check_finite=False)
        dL = -(d_y @ h)
        d_x = d_y.T[:, self.perm]  # y = P^T (x - b):  x-bar = P y-bar,  b-bar = -sum_n x-bar
        grads = {
            "lower": np.tril(dL, -1),
            "upper": np.triu(dU, 1),
            "raw_diag": self._diag_grads(dU, d_logdet, d, -1.0),
            "bias": -d_x.sum(axis=0),
        }
        return d_x, grads, None
