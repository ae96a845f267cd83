"""Methods live in their classes (docs/design.md, "Models: methods in their classes"): no class
body of the package assigns a function defined outside it (``loss_and_grads =
elbo_loss_and_grads``, ``build = classmethod(build_vae)``), so what ``vae.loss_and_grads`` runs
is found by reading ``VAE``."""

import ast
import importlib
import inspect
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "scratchvae"

#: wrappers that turn a function into a class attribute: ``build = classmethod(build_vae)``
WRAPPERS = {"classmethod", "staticmethod", "property"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _wrapped(value):
    """The expression a class-body value assigns: ``f``, ``a.f``, or ``f`` in ``classmethod(f)``."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) \
            and value.func.id in WRAPPERS and value.args:
        return value.args[0]
    return value


def _resolve(expr, namespace):
    """The object a Name or dotted Attribute names in ``namespace``, or None."""
    if isinstance(expr, ast.Name):
        return namespace.get(expr.id)
    if isinstance(expr, ast.Attribute):
        base = _resolve(expr.value, namespace)
        return None if base is None else getattr(base, expr.attr, None)
    return None


def foreign_functions_bound(source: str, namespace: dict) -> list[str]:
    """``Class.name = target`` for every class-body assignment (at any nesting of classes) whose
    value is a Name or an Attribute, bare or inside ``classmethod``/``staticmethod``/
    ``property``, that resolves in ``namespace`` (the module's globals) to a function defined
    outside that class. Names defined earlier in the same class body are the class's own."""
    found = []

    def visit_class(node, qualname):
        own = set()
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                own.add(stmt.name)
            elif isinstance(stmt, ast.ClassDef):
                own.add(stmt.name)
                visit_class(stmt, f"{qualname}.{stmt.name}")
            elif isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                expr = _wrapped(stmt.value)
                if isinstance(expr, ast.Name) and expr.id in own:
                    own.update(names)
                    continue
                obj = _resolve(expr, namespace)
                if inspect.isfunction(obj) and not obj.__qualname__.startswith(qualname + "."):
                    found.extend(f"{qualname}.{n} = {ast.unparse(stmt.value)}" for n in names)
                own.update(names)

    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            visit_class(node, node.name)
    return found


def test_the_check_finds_a_bound_function_and_passes_a_method():
    """The planted bugs: a module function assigned as a method, bare, through an attribute and
    wrapped in classmethod; an alias of the class's own method and a constant pass."""
    source = (
        "import types\n"
        "def loss(model, x):\n    return x\n"
        "helpers = types.SimpleNamespace(loss=loss)\n"
        "class VAE:\n"
        "    def forward(self, x):\n        return x\n"
        "    __call__ = forward\n"
        "    n = 3\n"
        "    loss_and_grads = loss\n"
        "    build = classmethod(loss)\n"
        "    grads = helpers.loss\n"
    )
    namespace = {}
    exec(compile(source, "<planted>", "exec"), namespace)  # noqa: S102 - a fixed test string
    assert foreign_functions_bound(source, namespace) == [
        "VAE.loss_and_grads = loss", "VAE.build = classmethod(loss)", "VAE.grads = helpers.loss"]


#: every module of the package but ``__main__`` (importing it runs the command line)
MODULES = [p for p in sorted(PKG.rglob("*.py")) if p.name != "__main__.py"]


@pytest.mark.parametrize("path", MODULES,
                         ids=lambda p: str(p.relative_to(PKG)))
def test_no_class_body_binds_a_module_function(path):
    module = importlib.import_module(module_name(path))
    bound = foreign_functions_bound(path.read_text(), vars(module))
    assert not bound, "module functions bound as methods:\n" + "\n".join(bound)
