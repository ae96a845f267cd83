"""The site's own Sphinx extension: a formula one click from its code, and back.

- **Derivation to code.** An inline code span that names the package's code, a dotted name
  (`` `scratchvae.distributions.gaussian.kl_standard_normal` ``) or a file
  (`` `scratchvae/flows/spline.py` ``), becomes a link to its highlighted source (the page
  ``sphinx.ext.viewcode`` writes, at the anchor of the function's lines). In a derivation,
  a name whose source page has no such anchor is a build warning (an error under ``-W``).
  Private functions a derivation names (the guards) are put into the API reference so that
  their lines get an anchor.
- **Code to derivation.** In a docstring, ``derivations/NN-topic.md#section`` becomes a link
  to that section of the rendered derivation; a file or section that does not exist is a
  warning.
- **The API reference, by folder.** ``.. package-reference:: scratchvae.nn`` documents the
  package and every module under it (found by walking it, so a new module appears by itself).
- **The gallery.** ``{example-gallery}`` lists every example (examples/[0-9]*.py, executed
  by myst-nb), each with the first figure it drew.
- **Maths that does not render is an error**: a formula with unbalanced braces,
  ``\\left``/``\\right`` or environments, and a ``$`` left in the text (maths the parser did
  not recognise), are warnings.
- The README is the home page: the site's table of contents is added to it when it is read
  (the file itself stays what GitHub shows), and ``index.html`` sends a browser to it.
- The kernels that execute the examples run in fast mode (``SCRATCHVAE_FAST=1`` unless set),
  one BLAS thread, this checkout first on their path, saving their pictures under the build
  folder.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import pathlib
import pkgutil
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = pathlib.Path(__file__).resolve().parents[1]
DERIVATIONS = ROOT / "derivations"
logger = logging.getLogger(__name__)

#: a code span naming the package's code: a dotted name, or a file of the package
CODE_NAME = re.compile(r"^scratchvae(?:\.\w+)+$")
CODE_FILE = re.compile(r"^scratchvae/(?:\w+/)*\w+\.py$")
#: a file named from inside the package, with its folder (the README's lecture map)
PACKAGE_FILE = re.compile(r"^(?:\w+/)+\w+\.py$")
#: the package's folders, one page of the API reference each (docs/reference/NAME.rst)
LAYERS = ("nn", "distributions", "flows", "models", "training", "data", "checks", "engine",
          "cli")
#: the names a derivation cites (as tests/test_derivation_links.py reads them)
CITED = re.compile(r"`(scratchvae(?:\.\w+)+)`")
#: a docstring's link into a derivation, optionally inside a ``literal``
DOCSTRING_LINK = re.compile(r"(``)?(?<![\w/.-])derivations/([\w.-]+)\.md(?:#([\w-]+))?(?(1)``)")
#: the examples the gallery shows, as document names
EXAMPLES = "examples/[0-9]*"
#: where a link to a folder of the repository goes on the site
FOLDER_PAGES = {"derivations": "docs/derivations", "examples": "docs/gallery"}
#: the site's table of contents, added to the home page (the README) when it is read
SITE_TOC = """

```{toctree}
:hidden:
:maxdepth: 2

docs/derivations
docs/gallery
docs/reference/index
docs/api
docs/design
benchmarks/README
docs/site
```
"""


# ----------------------------------------------------------------------------- names to code
def locate(dotted: str):
    """``(module, qualified name)`` of the code a dotted name refers to, where it is defined
    (a re-exported name resolves to its defining module; the name is None for a module), or
    None when nothing has that name."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        break
    else:
        return None
    module, qualname = obj.__name__, None
    for attr in parts[i:]:
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            return None
        code = _code_object(obj)
        where, name = getattr(code, "__module__", None), getattr(code, "__qualname__", None)
        if isinstance(where, str) and isinstance(name, str) and "<" not in name:
            module, qualname = where, name
        else:  # a property's owner, an attribute: the name within what holds it
            qualname = f"{qualname}.{attr}" if qualname else attr
    return module, qualname


def _code_object(obj):
    """The function behind a bound method, a static or class method, or a property."""
    for attribute in ("__func__", "fget"):
        inner = getattr(obj, attribute, None)
        if callable(inner):
            return inner
    return obj


_cited_cache: dict[str, set] = {}


def cited_code() -> set:
    """``(module, qualified name)`` of everything the derivations name."""
    if "cited" not in _cited_cache:
        found = set()
        for md in sorted(DERIVATIONS.glob("*.md")):
            for dotted in CITED.findall(md.read_text(encoding="utf-8")):
                where = locate(dotted)
                if where is not None and where[1] is not None:
                    found.add(where)
        _cited_cache["cited"] = found
    return _cited_cache["cited"]


def keep_cited_private_members(app, what, name, obj, skip, options):
    """autodoc-skip-member: document a private function or method a derivation names (a
    guard, a block's ``_forward``), so that its lines get an anchor to link to."""
    if not skip or not name.startswith("_") or name.startswith("__"):
        return None
    code = _code_object(obj)
    key = (getattr(code, "__module__", None), getattr(code, "__qualname__", None))
    return False if key in cited_code() else None


def cited_modules() -> set:
    """The modules the derivations name as a whole (`` `scratchvae.flows.spline` ``)."""
    found = set()
    for md in sorted(DERIVATIONS.glob("*.md")):
        for dotted in CITED.findall(md.read_text(encoding="utf-8")):
            where = locate(dotted)
            if where is not None and where[1] is None:
                found.add(where[0])
    return found


def source_pages_for_cited_modules(app, env):
    """env-updated: viewcode writes a source page only for a module with a documented name;
    a module that a derivation names as a whole gets one too (without anchors)."""
    if not hasattr(env, "_viewcode_modules"):
        return
    for module in sorted(cited_modules()):
        if not env._viewcode_modules.get(module):
            analyzer = ModuleAnalyzer.for_module(module)
            analyzer.find_tags()
            # viewcode's record: (code, tags, names that get an anchor, module of the docs)
            env._viewcode_modules[module] = (analyzer.code, analyzer.tags, {}, module)


def source_uri(app, fromdoc: str, module: str, qualname: str | None):
    """The link from ``fromdoc`` to the highlighted source of ``module`` (at ``qualname``'s
    lines), or None when viewcode writes no such page or anchor."""
    # viewcode's record of the modules it writes a page for, and of the names in each that
    # get an anchor (those documented in the API reference); tests/test_docs_site.py checks
    # the anchors in the written pages, so a change of this private record fails there
    entry = getattr(app.env, "_viewcode_modules", {}).get(module)
    if not entry or (qualname is not None and qualname not in entry[2]):
        return None
    page = "_modules/" + module.replace(".", "/")
    uri = app.builder.get_relative_uri(fromdoc, page)
    return f"{uri}#{qualname}" if qualname else uri


def link_code_names(app, doctree, docname):
    """doctree-resolved: code spans naming the package's code link to its source."""
    if app.builder.format != "html":
        return
    derivation = docname.startswith("derivations/")
    for literal in list(doctree.findall(nodes.literal)):
        if isinstance(literal.parent, (nodes.reference, addnodes.pending_xref)):
            continue
        text = literal.astext()
        if CODE_NAME.match(text):
            where = locate(text)
        elif CODE_FILE.match(text):
            where = (text[:-3].replace("/", "."), None)
        elif PACKAGE_FILE.match(text) and (ROOT / "scratchvae" / text).is_file():
            where = ("scratchvae." + text[:-3].replace("/", "."), None)  # the lecture map's
        elif text.rstrip("/") in LAYERS and text.endswith("/"):  # a layer's folder: its API
            _link(literal, app.builder.get_relative_uri(docname, f"docs/reference/{text[:-1]}"),
                  f"the API reference of scratchvae/{text}")
            continue
        else:
            continue
        uri = source_uri(app, docname, *where) if where else None
        if uri is None:
            if derivation:
                logger.warning(f"{text}: no highlighted source to link to (the name does not "
                               "exist, or it is not in the API reference)",
                               location=literal, type="scratchvae", subtype="source")
            continue
        _link(literal, uri, f"the source of {text}")
    for link in list(doctree.findall(nodes.reference)):
        module = link.get("scratchvae_module")
        if module:  # a Markdown link to a file of the package
            uri = source_uri(app, docname, module, None)
            if uri is None:
                logger.warning(f"{module}: no highlighted source to link to", location=link,
                               type="scratchvae", subtype="source")
                uri = "#"
            link["refuri"] = uri


def _link(literal, uri, title):
    """Wrap a code span in a link."""
    link = nodes.reference("", "", refuri=uri, internal=True, classes=["source-link"],
                           reftitle=title)
    literal.replace_self(link)
    link.append(literal)


# ----------------------------------------------------------------------------- docstrings
def docstring_links(app, what, name, obj, options, lines):
    """autodoc-process-docstring: read the docstring as the plain text it is written as (an
    indented block is preformatted, a bar is a bar), and make each
    ``derivations/NN-topic.md#section`` of its prose a link."""
    lines[:] = mark_preformatted(lines)
    for i in prose_lines(lines):
        parts = re.split(r"(``.+?``)", lines[i])
        lines[i] = "".join(
            DOCSTRING_LINK.sub(_derivation_role, p) if p.startswith("``")
            else DOCSTRING_LINK.sub(_derivation_role, p.replace("|", "\\|")) for p in parts)
    # remember which code follows which section, for the section's "In the code" line
    where = (name, None) if what == "module" else locate(name)
    if where is None:
        return
    record = _code_by_section(app.env)
    for i in prose_lines(lines):
        for match in re.finditer(r":derivation:`([^`#]+)(?:#([^`]+))?`", lines[i]):
            section = (f"derivations/{match.group(1)}", match.group(2) or "")
            record.setdefault(section, {})[where] = app.env.docname


LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.)\s")


def mark_preformatted(lines):
    """The docstrings here are plain text for ``help()``: a block indented under a paragraph,
    after a blank line, is a table or a call shown as written. reStructuredText would read it
    as a quotation (and fail on its inner indentation): mark it as a literal block (``::``).
    A block under a list item (its next paragraph) and one after ``::`` are left alone."""
    out, base, literal, blank_before, item = [], 0, None, False, False
    for line in lines:
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if not stripped:
            out.append(line)
            blank_before = True
            continue
        if literal is not None and indent > literal:
            out.append(line)
            blank_before = False
            continue
        literal = None
        if blank_before and indent > base and out and not item:
            out[-1:] = ["", " " * base + "::", ""]
            literal = base
        else:
            base, item = indent, bool(LIST_ITEM.match(line))
            if line.rstrip().endswith("::"):
                literal = indent
        out.append(line)
        blank_before = False
    return out


def prose_lines(lines):
    """Indices of the lines that are prose: not in a literal block (after ``::``) and not a
    doctest."""
    literal = None
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if literal is not None:
            if not stripped or indent > literal:
                continue
            literal = None
        if stripped.startswith(">>>"):
            continue
        yield i
        if line.rstrip().endswith("::"):
            literal = indent


def _derivation_role(match):
    target = match.group(2) + (f"#{match.group(3)}" if match.group(3) else "")
    return f":derivation:`{target}`"


def derivation_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``:derivation:`02-gaussian#section```: a link to a derivation's section, resolved
    (and checked) once every page is read."""
    page, _, anchor = text.partition("#")
    link = nodes.reference(rawtext, "", refuri="#", classes=["derivation-link"],
                           scratchvae_derivation=f"derivations/{page}",
                           scratchvae_anchor=anchor)
    return [link], []


def _code_by_section(env):
    """``(derivation page, section anchor or "") -> {(module, qualname): API page}``: the code
    whose docstring links that section."""
    if not hasattr(env, "scratchvae_code_by_section"):
        env.scratchvae_code_by_section = {}
    return env.scratchvae_code_by_section


def purge_code_by_section(app, env, docname):
    for code in _code_by_section(env).values():
        for where in [w for w, page in code.items() if page == docname]:
            del code[where]


def merge_code_by_section(app, env, docnames, other):
    record = _code_by_section(env)
    for section, code in _code_by_section(other).items():
        record.setdefault(section, {}).update(code)


def code_of_each_section(app, doctree, docname):
    """doctree-resolved: under each heading of a derivation (and under the page's title, for
    the whole file), a line "In the code:" with a source link for every function, class or
    module whose docstring links that section. So every section that some code follows links
    to that code's lines, from the docstrings' own links back."""
    if app.builder.format != "html" or not docname.startswith("derivations/"):
        return
    record = _code_by_section(app.env)
    slugs = app.env.metadata[docname].get("myst_slugs", {})
    section_ids = {"": None, **{slug: entry[1] for slug, entry in slugs.items()}}
    for anchor, section_id in section_ids.items():
        code = record.get((docname, anchor))
        if not code:
            continue
        section = _section(doctree, section_id)
        if section is None:
            continue
        links = []
        for module, qualname in sorted(code, key=lambda w: (w[0], w[1] or "")):
            uri = source_uri(app, docname, module, qualname)
            if uri is None:
                continue
            shown = module.rsplit(".", 1)[-1] + (f".{qualname}" if qualname else " (module)")
            text = nodes.literal(shown, shown)
            title = f"the source of {module}" + (f".{qualname}" if qualname else "")
            links.append(nodes.reference("", "", text, refuri=uri, internal=True,
                                         classes=["source-link"], reftitle=title))
        if not links:
            continue
        line = nodes.paragraph("", "", classes=["derivation-code"])
        line += nodes.strong("", "In the code: ")
        for i, link in enumerate(links):
            line += nodes.Text(", " if i else "")
            line += link
        section.insert(1 if isinstance(section[0], nodes.title) else 0, line)


def _section(doctree, section_id):
    """The section with that id (the page's first section for None)."""
    for section in doctree.findall(nodes.section):
        if section_id is None or section_id in section["ids"]:
            return section
    return None


def resolve_derivation_links(app, doctree, docname):
    """doctree-resolved: point each ``:derivation:`` link at its page and section, with the
    section's title as its text; a page or section that does not exist is a warning."""
    if app.builder.format != "html":
        return
    env = app.env
    for link in doctree.findall(nodes.reference):
        page = link.get("scratchvae_derivation")
        if not page:
            continue
        anchor = link["scratchvae_anchor"]
        written = f"{page}.md" + (f"#{anchor}" if anchor else "")
        if page not in env.all_docs:
            logger.warning(f"{written}: no such derivation", location=link,
                           type="scratchvae", subtype="derivation")
            link += nodes.literal(written, written)
            continue
        title = env.titles[page].astext()
        if anchor:
            section = env.metadata[page].get("myst_slugs", {}).get(anchor)
            if section is None:
                logger.warning(f"{written}: the derivation has no such section", location=link,
                               type="scratchvae", subtype="derivation")
            else:
                title = section[2]
        number = page.split("/")[-1].split("-")[0]
        link["refuri"] = app.builder.get_relative_uri(docname, page) + (
            f"#{anchor}" if anchor else "")
        link["reftitle"] = written
        link += nodes.inline("", f"derivation {number}: {title}")


# ----------------------------------------------------------------------------- repository links
def repository_links(app, doctree):
    """doctree-read: Markdown links to what is a page of the site only as a folder or as
    code: a folder (``derivations/``, ``examples/``) links to its index page, a file of the
    package to its highlighted source."""
    env = app.env
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst" or node.get("refdomain"):
            continue
        target = node["reftarget"]
        folder = pathlib.Path(env.relfn2path(target.split("#")[0], env.docname)[1])
        page = FOLDER_PAGES.get(folder.name) if folder.is_dir() and folder.parent == ROOT else None
        if page:
            node["refdomain"], node["reftarget"], node["reftargetid"] = "doc", page, None
    for node in list(doctree.findall(addnodes.download_reference)):
        path = pathlib.Path(env.relfn2path(node["reftarget"], env.docname)[1]).resolve()
        relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else ""
        if CODE_FILE.match(relative):
            link = nodes.reference("", "", *node.children, refuri="#",
                                   scratchvae_module=relative[:-3].replace("/", "."))
            node.replace_self(link)


# ----------------------------------------------------------------------------- maths
def tex_problem(tex: str) -> str | None:
    """What keeps a formula from rendering that can be seen without rendering it: unbalanced
    braces, ``\\left`` without ``\\right``, an environment not closed in order."""
    text = re.sub(r"\\[{}\\]", "", tex)
    depth = 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return "a } that closes no {"
    if depth:
        return f"{depth} {{ never closed"
    lefts = len(re.findall(r"\\left(?![a-zA-Z])", text))
    rights = len(re.findall(r"\\right(?![a-zA-Z])", text))
    if lefts != rights:
        return f"{lefts} \\left against {rights} \\right"
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", text):
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            return f"\\end{{{env}}} closes no \\begin{{{env}}}"
    if stack:
        return f"\\begin{{{stack[-1]}}} never ended"
    return None


NOT_PROSE = (nodes.literal, nodes.FixedTextElement, nodes.math, nodes.raw, nodes.comment,
             nodes.Special)


def check_maths(app, doctree):
    """doctree-read: each formula balanced; no ``$`` left in the prose (maths that the
    Markdown parser did not take for maths, shown to the reader as dollars and TeX)."""
    for node in doctree.findall(lambda n: isinstance(n, (nodes.math, nodes.math_block))):
        problem = tex_problem(node.astext())
        if problem:
            logger.warning(f"formula {node.astext()[:60]!r}: {problem}", location=node,
                           type="scratchvae", subtype="math")
    for text in doctree.findall(nodes.Text):
        if "$" not in text:
            continue
        parent, prose = text.parent, True
        while parent is not None:
            if isinstance(parent, NOT_PROSE) or "cell_output" in parent.get("classes", ()):
                prose = False
                break
            parent = parent.parent
        if prose:
            logger.warning(f"a $ outside any formula (maths that did not parse): "
                           f"{text.astext()[:80]!r}", location=text.parent,
                           type="scratchvae", subtype="math")


# ----------------------------------------------------------------------------- API reference
class PackageReference(SphinxDirective):
    """``.. package-reference:: scratchvae.nn``: the package's docstring and every module
    under it, each in its own section, in the order of their dotted names."""

    required_arguments = 1

    def run(self):
        package = importlib.import_module(self.arguments[0])
        modules = [package.__name__] + sorted(
            info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
            if not info.name.rsplit(".", 1)[-1].startswith("_"))
        lines = []
        for module in modules:
            title = f"``{module}``"
            lines += [title, "-" * len(title), "", f".. automodule:: {module}", ""]
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, self.get_source_info()[0]), node)
        return node.children


# ----------------------------------------------------------------------------- gallery
class example_gallery(nodes.General, nodes.Element):
    """Placeholder for the gallery's cards, filled once every example is read."""


class ExampleGallery(SphinxDirective):
    """``{example-gallery}``: every example as a card (title, first figure), and the
    examples in the table of contents."""

    def run(self):
        examples = sorted(d for d in self.env.found_docs if fnmatch.fnmatch(d, EXAMPLES))
        toctree = addnodes.toctree()
        settings = dict(parent=self.env.docname, entries=[(None, d) for d in examples],
                        includefiles=examples, maxdepth=1, caption=None, glob=False,
                        hidden=True, includehidden=False, numbered=0, titlesonly=True)
        for key, value in settings.items():
            toctree[key] = value
        wrapper = nodes.compound(classes=["toctree-wrapper"])
        wrapper += toctree
        return [wrapper, example_gallery(examples=examples)]


def first_figure(env, docname):
    """The first figure an executed example drew (an image in a cell's output), or None."""
    for image in env.get_doctree(docname).findall(nodes.image):
        parent = image.parent
        while parent is not None and "cell_output" not in parent.get("classes", ()):
            parent = parent.parent
        if parent is not None:
            return image
    return None


def fill_gallery(app, doctree, docname):
    """doctree-resolved: a card per example, linking to it, with its first figure."""
    for gallery in list(doctree.findall(example_gallery)):
        grid = nodes.container(classes=["example-gallery"])
        for example in gallery["examples"]:
            card = nodes.reference("", "", refuri=app.builder.get_relative_uri(docname, example))
            figure = first_figure(app.env, example)
            if figure is not None:
                thumbnail = figure.deepcopy()
                thumbnail["alt"] = f"the first figure of {example}"
                card += thumbnail
            else:
                card += nodes.inline("", "(prints a table: no figure)", classes=["no-figure"])
            card += nodes.inline("", app.env.titles[example].astext(), classes=["card-title"])
            card += nodes.inline("", example.split("/")[-1] + ".py", classes=["card-file"])
            grid += nodes.paragraph("", "", card, classes=["example-card"])
        gallery.replace_self(grid)


def visit_gallery(self, node):
    raise nodes.SkipNode  # only when fill_gallery did not run (a builder other than HTML)


# ----------------------------------------------------------------------------- pages, kernels
def add_site_toc(app, docname, source):
    """source-read: the site's table of contents, hidden, at the end of the home page."""
    if docname == app.config.root_doc:
        source[0] += SITE_TOC


def kernel_environment(app, config):
    """config-inited: the environment of the kernels that execute the examples."""
    if config.nb_execution_mode == "off":
        return
    os.environ.setdefault("SCRATCHVAE_FAST", "1")
    os.environ["SCRATCHVAE_EXAMPLES_OUT"] = str(pathlib.Path(app.outdir).parent / "examples-out")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *path])
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend


def home_redirect(app, exception):
    """build-finished: ``index.html`` sends a browser to the home page."""
    if exception is not None or app.builder.format != "html":
        return
    home = app.builder.get_target_uri(app.config.root_doc)
    (pathlib.Path(app.outdir) / "index.html").write_text(
        f'<!DOCTYPE html>\n<meta charset="utf-8">\n<title>scratchvae</title>\n'
        f'<meta http-equiv="refresh" content="0; url={home}">\n'
        f'<a href="{home}">scratchvae</a>\n', encoding="utf-8")


def setup(app):
    app.connect("config-inited", kernel_environment)
    app.connect("source-read", add_site_toc)
    app.connect("doctree-read", repository_links, priority=400)  # before the collectors
    app.connect("doctree-read", check_maths)
    app.connect("autodoc-process-docstring", docstring_links)
    app.connect("autodoc-skip-member", keep_cited_private_members)
    app.connect("env-updated", source_pages_for_cited_modules)
    app.connect("env-purge-doc", purge_code_by_section)
    app.connect("env-merge-info", merge_code_by_section)
    app.connect("doctree-resolved", link_code_names)
    app.connect("doctree-resolved", code_of_each_section)
    app.connect("doctree-resolved", resolve_derivation_links)
    app.connect("doctree-resolved", fill_gallery)
    app.connect("build-finished", home_redirect)
    app.add_role("derivation", derivation_role)
    app.add_directive("package-reference", PackageReference)
    app.add_directive("example-gallery", ExampleGallery)
    app.add_node(example_gallery, html=(visit_gallery, None), text=(visit_gallery, None),
                 latex=(visit_gallery, None))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
