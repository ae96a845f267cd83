"""The folders show the layers (docs/design.md, "The layers"), imports point one way, and the
module paths users learned before the folders still import."""

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

import scratchvae

PACKAGE = pathlib.Path(scratchvae.__file__).parent

#: a module may import from its own layer and the layers below it (lower rank); the engine
#: stands beside them all: it accelerates the reference, so it may import any of it
RANK = {"checks.arguments": 0, "engine": 0, "nn": 1, "distributions": 2, "flows": 3,
        "models": 4, "training": 5, "data": 5, "checks": 6, "cli": 7}


def _layer(module):
    if module == "checks.arguments" or module.startswith("checks.arguments."):
        return "checks.arguments"
    head = module.split(".")[0]
    return head if head in RANK else None


def _imports(path):
    """(line, imported module relative to scratchvae) of every relative import, at any depth
    (an import inside a function counts: it is still a dependency)."""
    rel = path.relative_to(PACKAGE).with_suffix("").as_posix().split("/")
    package = rel[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                yield node.lineno, ".".join([*base, node.module])
            else:
                for alias in node.names:
                    yield node.lineno, ".".join([*base, alias.name])


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _layer(path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", "."))
        if me is None or me == "engine":
            continue
        for line, module in _imports(path):
            other = _layer(module)
            if other is not None and RANK[other] > RANK[me]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({me}) imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    # the checker itself: a flows module importing a model is caught
    fake = PACKAGE / "flows" / "_upward_import_probe.py"
    fake.write_text("from ..models import vae\n")
    try:
        with pytest.raises(AssertionError, match="_upward_import_probe.py:1 \\(flows\\)"):
            test_imports_point_down_the_layers()
    finally:
        fake.unlink()


@pytest.mark.parametrize("old, new", sorted(scratchvae.MOVED.items()))
def test_module_paths_of_the_flat_layout_still_import(old, new):
    if old in ("plots",):
        pytest.importorskip("matplotlib")
    moved = importlib.import_module(f"scratchvae.{old}")
    assert moved is importlib.import_module(f"scratchvae.{new}")
    assert moved.__spec__.name == f"scratchvae.{new}"  # its own spec, not the alias's


def test_old_import_forms_users_wrote_still_work():
    code = ("from scratchvae.vae import VAE\nfrom scratchvae.train import Trainer\n"
            "from scratchvae.density import FlowDensity, StandardNormal\n"
            "from scratchvae.flows.coupling import coupling_flow\n"
            "from scratchvae import testing, gradcheck, optim\n"
            "import scratchvae, scratchvae.models.vae as v\n"
            "assert VAE is scratchvae.VAE is v.VAE and Trainer is scratchvae.Trainer\n"
            "assert testing.__name__ == 'scratchvae.checks.testing'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dir_lists_the_public_names_before_they_are_loaded():
    code = ("import scratchvae, scratchvae.flows\nprint(' '.join(dir(scratchvae)))\n"
            "print(' '.join(dir(scratchvae.flows)))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.split("\n")
    top, flows = set(out[0].split()), set(out[1].split())
    assert {"VAE", "FlowDensity", "Trainer", "coupling_flow", "load_digits", "nn", "models",
            "engine", "flows"} <= top
    assert "importlib" not in top and "lazy_getattr" not in top
    assert {"coupling_flow", "Chain", "Planar", "rq_spline"} <= flows
