"""The benchmark's peers: our workloads (benchmarks/workloads.py) hand-written in JAX and in
PyTorch, the same maths from the same parameters on the same data (benchmarks/peers/README.md).

``jax_models`` (variant ``jax-jit``) and ``torch_models`` (``torch``, ``torch-fused``) each
expose ``VARIANTS``, ``available()``, ``build(workload, variant, batch=None, seed=0)`` (an
object with ``.step() -> float`` and ``.name``) and ``loss_and_grads(workload, params, x,
eps=None)``. Neither framework is imported until its module is.
"""

#: each variant's module in this package
MODULES = {"jax-jit": "jax_models", "torch": "torch_models", "torch-fused": "torch_models"}
