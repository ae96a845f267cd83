"""Adapters: a PyTorch or JAX transform as the two NumPy callables ``check_transform`` takes.

    from scratchvae.checks import adapters, testing
    t = adapters.from_nflows(transform.double().eval())   # also normflows' flows
    testing.assert_transform(t.forward, t.inverse, points, vjp=t.vjp)

Each adapter returns an ``Adapted`` (``forward``, ``inverse``, ``vjp``, ``name``): ``forward``
and ``inverse`` take and return float64 NumPy arrays, ``(N, D) -> ((N, D), (N,))``, and ``vjp``
is the framework's own gradient (``torch.autograd.grad``, ``jax.vjp``) of
``<d_out, out> + <d_logdet, logdet>`` with respect to the input, so a custom ``backward`` (a
``torch.autograd.Function``, a ``jax.custom_vjp``) is checked against finite differences too.
A log-det of shape ``(N, D)`` (an elementwise transform: zuko's ``event_dim = 0`` transforms,
distrax's scalar bijectors) is summed over its last axis, as ``distrax.Block(b, 1)`` would.

The framework is imported when an adapter is called, never at import: the core install needs
none. The directions are the library's: nflows' and zuko's ``forward`` is their normalising
direction (data -> noise), distrax's is the generative one; the check does not care.
Derivation: derivations/19-checking-a-transform.md#adapters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Adapted", "from_torch", "from_nflows", "from_zuko", "from_jax", "from_distrax"]


@dataclass(frozen=True)
class Adapted:
    """A transform as NumPy callables: ``forward``/``inverse`` ``(N, D) -> (out, logdet)``
    (either None when the library has no such pass) and ``vjp(direction, point, d_out,
    d_logdet) -> d_point``; hand them to ``check_transform``. ``check(points, **kwargs)`` does."""
    forward: Callable | None
    inverse: Callable | None
    vjp: Callable | None
    name: str

    def check(self, points, **kwargs):
        """``check_transform(self.forward, self.inverse, points, vjp=self.vjp, name=...)``."""
        from .transforms import check_transform
        kwargs.setdefault("name", self.name)
        kwargs.setdefault("vjp", self.vjp)
        return check_transform(self.forward, self.inverse, points, **kwargs)


def _sum_event(logdet, n_rows):
    """An elementwise log-det ``(N, D, ...)`` summed to one value per row ``(N,)``."""
    if logdet is None:
        return None
    if logdet.ndim == 0:  # a constant log-det (a fixed linear map) broadcast to every row
        return logdet * np.ones(n_rows)
    return logdet.reshape(logdet.shape[0], -1).sum(axis=1) if logdet.ndim > 1 else logdet


# ----------------------------------------------------------------------------- PyTorch
def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - only without PyTorch
        raise ImportError("this adapter needs PyTorch: pip install 'scratchvae[bench]'") from e
    return torch


def _check_torch_params(module, what):
    """Float64 parameters: a float32 module either refuses float64 inputs or computes in
    float32, where finite differences resolve a derivative to 1e-3 only."""
    torch = _torch()
    if isinstance(module, torch.nn.Module):
        for pname, p in module.named_parameters():  # buffers may be masks of another dtype
            if p.is_floating_point() and p.dtype != torch.float64:
                raise ValueError(f"{what}: {pname} is {p.dtype}; call .double() on it first "
                                 "(the check runs in float64)")


def from_torch(forward: Callable | None = None, inverse: Callable | None = None,
               name: str = "torch transform") -> Adapted:
    """Two PyTorch functions ``x -> (y, logdet)`` (float64 tensors; either may be None, and
    ``logdet`` may be None or elementwise) as NumPy callables, with autograd as the ``vjp``.
    Use it for any library's convention, e.g. pyro's ``lambda x: (t(x),
    t.log_abs_det_jacobian(x, t(x)))``.
    Derivation: derivations/19-checking-a-transform.md#adapters.
    """
    torch = _torch()
    passes = {"forward": forward, "inverse": inverse}

    def numpy_pass(fn):
        def call(z):
            with torch.no_grad():
                y, logdet = _split(fn(torch.tensor(z, dtype=torch.float64)))
            y = y.detach().cpu().numpy()
            logdet = None if logdet is None else _sum_event(logdet.detach().cpu().numpy(),
                                                            len(z))
            return y, logdet
        return call

    def vjp(direction, point, d_out, d_logdet):
        fn = passes[direction]
        z = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            y, logdet = _split(fn(z))
            total = (y * torch.tensor(d_out, dtype=y.dtype)).sum()
            if logdet is not None:
                logdet = logdet.reshape(logdet.shape[0], -1).sum(1) if logdet.ndim > 1 else \
                    logdet.expand(len(point)) if logdet.ndim == 0 else logdet
                total = total + (logdet * torch.tensor(d_logdet, dtype=logdet.dtype)).sum()
            (grad,) = torch.autograd.grad(total, z, allow_unused=True)
        return np.zeros_like(point) if grad is None else grad.detach().cpu().numpy()

    return Adapted(forward and numpy_pass(forward), inverse and numpy_pass(inverse), vjp, name)


def _split(result):
    if isinstance(result, tuple | list):
        if len(result) != 2:
            raise ValueError(f"transform: expected (out, logdet), got {len(result)} items")
        return result[0], result[1]
    return result, None


def from_nflows(transform, context=None, name: str | None = None) -> Adapted:
    """An nflows ``Transform`` (``transform(x, context) -> (y, logabsdet)``,
    ``transform.inverse(y, context)``; normflows' flows share it without a context) as NumPy
    callables. Call ``.double()`` first, and ``.eval()`` when it has batch norm or dropout.
    ``context``: a float64 tensor or array ``(N, C)`` paired row by row with the points (bind
    the same N). A transform that keeps nflows' ``Transform.inverse`` (which raises
    ``InverseNotAvailable``) gets no inverse: a one-way transform.
    Derivation: derivations/19-checking-a-transform.md#adapters.
    """
    torch = _torch()
    _check_torch_params(transform, "transform")
    ctx = None if context is None else torch.as_tensor(context, dtype=torch.float64)
    name = name or type(transform).__name__

    def forward(x):
        return transform(x) if ctx is None else transform(x, ctx)

    def inverse(y):
        return transform.inverse(y) if ctx is None else transform.inverse(y, ctx)

    return from_torch(forward, inverse if _has_inverse(transform) else None, name)


def _has_inverse(transform):
    """nflows marks a one-way transform by leaving ``Transform.inverse`` (which raises
    ``InverseNotAvailable``) in place."""
    inverse = getattr(type(transform), "inverse", None)
    return inverse is not None and getattr(inverse, "__qualname__", "") != "Transform.inverse"


def from_zuko(transform, context=None, name: str | None = None) -> Adapted:
    """A zuko transform as NumPy callables: a ``Transform`` (``call_and_ladj``,
    ``transform.inv.call_and_ladj``), a ``LazyTransform`` (called with ``context`` first) or a
    ``Flow`` (its ``transform``). Call ``.double()`` on a module first. zuko's ``forward`` is
    the normalising direction (x -> z).
    Derivation: derivations/19-checking-a-transform.md#adapters.
    """
    torch = _torch()
    name = name or type(transform).__name__
    if isinstance(transform, torch.nn.Module):
        _check_torch_params(transform, "transform")
        if hasattr(transform, "base") and hasattr(transform, "transform"):  # a zuko Flow
            transform = transform.transform
        ctx = None if context is None else torch.as_tensor(context, dtype=torch.float64)
        lazy = transform
    else:
        lazy, ctx = None, None
    if lazy is not None and ctx is not None:
        # a LazyTransform's transform depends on the context row by row: rebuild it per call
        # (the points and the context are paired, so the batch is the context's)
        def build():
            return lazy(ctx)
    elif lazy is not None:
        t = lazy()

        def build():
            return t
    else:
        def build():
            return transform

    return from_torch(lambda x: build().call_and_ladj(x),
                      lambda y: build().inv.call_and_ladj(y), name)


# ----------------------------------------------------------------------------- JAX
def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:  # pragma: no cover - only without JAX
        raise ImportError("this adapter needs JAX: pip install jax jaxlib") from e
    return jax, jnp


def from_jax(forward: Callable | None = None, inverse: Callable | None = None,
             name: str = "jax transform", jit: bool = False) -> Adapted:
    """Two JAX functions ``x -> (y, logdet)`` (either may be None) as NumPy callables, with
    ``jax.vjp`` as the ``vjp``. JAX computes in float32 unless 64-bit is on: call
    ``jax.config.update("jax_enable_x64", True)`` before building the parameters.
    ``jit``: compile each function once (the check calls it about 10 D times).
    flowjax: ``from_jax(lambda x: b.transform_and_log_det(x, c), ...)`` with ``jax.vmap``
    over rows when the bijection is written for one point.
    Derivation: derivations/19-checking-a-transform.md#adapters.
    """
    jax, jnp = _jax()
    if not jax.config.jax_enable_x64:
        raise ValueError("jax: 64-bit is off, so every array would be float32; call "
                         "jax.config.update('jax_enable_x64', True) first")
    passes = {"forward": forward, "inverse": inverse}
    if jit:
        passes = {k: f and jax.jit(f) for k, f in passes.items()}

    def numpy_pass(fn):
        def call(z):
            y, logdet = _split(fn(jnp.asarray(z, dtype=jnp.float64)))
            logdet = None if logdet is None else _sum_event(np.asarray(logdet), len(z))
            return np.asarray(y), logdet
        return call

    def vjp(direction, point, d_out, d_logdet):
        fn = passes[direction]
        (y, logdet), pullback = jax.vjp(lambda z: _split(fn(z)), jnp.asarray(point))
        d_ld = None if logdet is None else jnp.broadcast_to(
            jnp.asarray(d_logdet).reshape((-1,) + (1,) * (logdet.ndim - 1)), logdet.shape)
        (grad,) = pullback((jnp.asarray(d_out), d_ld))
        return np.asarray(grad)

    return Adapted(passes["forward"] and numpy_pass(passes["forward"]),
                   passes["inverse"] and numpy_pass(passes["inverse"]), vjp, name)


def from_distrax(bijector, name: str | None = None, jit: bool = False) -> Adapted:
    """A distrax bijector (``forward_and_log_det``, ``inverse_and_log_det``) as NumPy
    callables; a scalar bijector's elementwise log-det is summed over the last axis.
    Derivation: derivations/19-checking-a-transform.md#adapters.
    """
    return from_jax(bijector.forward_and_log_det,
                    getattr(bijector, "inverse_and_log_det", None),
                    name or type(bijector).__name__, jit)
