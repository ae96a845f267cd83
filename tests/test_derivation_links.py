"""Code and derivations point at each other (docs/design.md, "Derivations and code point at each
other").

1. Every ``derivations/FILE.md#anchor`` written in the package resolves to a file and heading.
2. Every ``scratchvae.module.name`` written in a derivation resolves to a real object.
3. That object's docstring (or its module's, for a module) links back to the same file.
4. Every derivation file names at least one function, and every file is linked from the code.
"""

import importlib
import inspect
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DERIV = ROOT / "derivations"
PKG = ROOT / "scratchvae"
LINK = re.compile(r"derivations/([\w.-]+\.md)(?:#([\w-]+))?")
NAME = re.compile(r"`(scratchvae(?:\.\w+)+)`")


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def code_links():
    """Links from the package and from the examples."""
    for py in sorted(PKG.rglob("*.py")) + sorted((ROOT / "examples").glob("*.py")):
        for m in LINK.finditer(py.read_text()):
            yield py.relative_to(ROOT), m.group(1), m.group(2)


def resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_there_are_derivations():
    assert sorted(p.name for p in DERIV.glob("*.md"))[:2] == [
        "00-conventions.md", "01-linear-and-mlp.md"]


def test_code_links_resolve():
    files = {p.name: anchors(p) for p in DERIV.glob("*.md")}
    bad = [f"{py}: derivations/{f}#{a}" for py, f, a in code_links()
           if f not in files or (a and a not in files[f])]
    assert not bad, "dangling links from code:\n" + "\n".join(bad)


@pytest.mark.parametrize("md", sorted(DERIV.glob("*.md")), ids=lambda p: p.name)
def test_derivation_names_resolve_and_link_back(md):
    names = sorted(set(NAME.findall(md.read_text())))
    if md.name != "00-conventions.md":
        assert names, f"{md.name} names no function it derives"
    bad = []
    for dotted in names:
        try:
            obj = resolve(dotted)
        except (ImportError, AttributeError):
            bad.append(f"{dotted}: does not exist")
            continue
        doc = inspect.getdoc(obj) or ""
        if inspect.ismodule(obj):
            doc = obj.__doc__ or ""
        if f"derivations/{md.name}" not in doc:
            bad.append(f"{dotted}: docstring does not link back to derivations/{md.name}")
    assert not bad, "\n".join(bad)


def test_every_derivation_is_linked_from_code():
    linked = {f for _, f, _ in code_links()}
    orphans = sorted(p.name for p in DERIV.glob("*.md") if p.name not in linked)
    assert not orphans, f"derivations no code links to: {orphans}"
