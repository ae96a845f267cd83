"""The documentation site (docs/site.md): built, and its pages checked.

``python docs/build.py`` builds it with warnings as errors; the tests here read the pages it
wrote: the maths is rendered (MathJax markup, no dollar left in the prose), every derivation
page links each name it cites to the highlighted lines of that code, every docstring link back
lands on a derivation section that exists, the gallery holds every example with its figures,
the README is the home page, every module is in the API reference, and no link of the site
is broken (its page and its anchor exist).

The site they read: ``SCRATCHVAE_DOCS_HTML=DIR`` (a build's html folder; .ci/run sets it after
running the README's docs command), or else a build made here, once, into a temporary folder
(minutes: every example is executed) when the docs tools are installed; without them these
tests skip, saying to ``pip install -e ".[docs]"``. The unit tests of the extension's helpers
need only Sphinx.
"""

import configparser
import html.parser
import importlib.util
import os
import pathlib
import posixpath
import re
import subprocess
import sys
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DERIVATIONS = sorted((ROOT / "derivations").glob("*.md"))
EXAMPLES = sorted((ROOT / "examples").glob("[0-9]*.py"))
#: what building the site imports (setup.cfg's [docs] extra installs them)
DOCS_TOOLS = {"sphinx": "sphinx", "myst_parser": "myst-parser", "myst_nb": "myst-nb",
              "furo": "furo", "jupytext": "jupytext", "ipykernel": "ipykernel",
              "matplotlib": "matplotlib", "sklearn": "scikit-learn", "tqdm": "tqdm"}
#: the examples that draw no figure (tests/test_examples.py)
DRAWS_NOTHING = {"09_property_test_your_bijector.py"}
CITED = re.compile(r"`(scratchvae(?:\.\w+)+)`")
#: a formula of derivations/02-gaussian.md, as the page must hold it for MathJax
KNOWN_FORMULA = r"\log \mathcal N(z; 0, I) = -\tfrac12 \sum_{j=1}^D z_j^2 - \tfrac D2 \log 2\pi ."


def missing_tools():
    return [package for module, package in DOCS_TOOLS.items()
            if importlib.util.find_spec(module) is None]


def needs_sphinx():
    if importlib.util.find_spec("sphinx") is None:
        pytest.skip('needs sphinx: pip install -e ".[docs]"')


# ----------------------------------------------------------------------------- reading pages
class Page(html.parser.HTMLParser):
    """One HTML page: its ids, its links (href, classes), its images, and its prose (the text
    outside code, maths, scripts and styles)."""

    NOT_PROSE = {"code", "pre", "script", "style", "math"}

    def __init__(self, path):
        super().__init__(convert_charrefs=True)
        self.path, self.ids, self.links, self.images, self.prose = path, set(), [], [], []
        self._skip = []  # the open elements whose text is not prose
        self._open = []  # (tag, classes) of the open elements
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.links.append((attrs["href"], classes, [c for _, c in self._open]))
        if tag == "img":
            self.images.append((attrs.get("src", ""), [c for _, c in self._open]))
        if tag in ("img", "br", "hr", "meta", "link", "input"):
            return
        self._open.append((tag, classes))
        self._skip.append(tag in self.NOT_PROSE or "math" in classes)

    def handle_endtag(self, tag):
        while self._open:
            open_tag, _ = self._open.pop()
            self._skip.pop()
            if open_tag == tag:
                break

    def handle_data(self, data):
        if not any(self._skip):
            self.prose.append(data)

    def relative(self, href):
        """The page (a path) and the anchor a relative link points to."""
        url = urllib.parse.urlsplit(href)
        target = posixpath.normpath(posixpath.join(posixpath.dirname(str(self.path)),
                                                   urllib.parse.unquote(url.path)))
        return (pathlib.Path(target) if url.path else self.path), url.fragment


_pages = {}


def page(path):
    if path not in _pages:
        _pages[path] = Page(path)
    return _pages[path]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The html folder of a built site."""
    given = os.environ.get("SCRATCHVAE_DOCS_HTML")
    if given:
        html_dir = pathlib.Path(given).resolve()
        assert (html_dir / "README.html").is_file(), f"SCRATCHVAE_DOCS_HTML={given}: no site"
        return html_dir
    missing = missing_tools()
    if missing:
        pytest.skip(f'needs {", ".join(missing)} to build the site: pip install -e ".[docs]"')
    out = tmp_path_factory.mktemp("docs")
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out / "html"


def html_of(site, source):
    """The page built from a source file of the repository."""
    return site / pathlib.Path(source).relative_to(ROOT).with_suffix(".html")


# ----------------------------------------------------------------------------- the pages
def test_maths_is_rendered(site):
    """MathJax is loaded and gets the formulas as its markup (display and inline); no dollar
    is left in the prose of a derivation (maths the Markdown parser did not take for maths)."""
    gaussian = html_of(site, ROOT / "derivations" / "02-gaussian.md")
    text = gaussian.read_text(encoding="utf-8")
    assert re.search(r"<script[^>]+src=\"[^\"]*mathjax[^\"]*\"", text, re.I)
    displays = re.findall(r'<div class="math[^"]*">\s*\\\[(.*?)\\\]\s*</div>', text, re.S)
    assert KNOWN_FORMULA in [" ".join(html.unescape(d).split()) for d in displays]
    assert re.search(r'<span class="math[^"]*">\\\(p\(z\) = \\mathcal N\(0, I\)\\\)</span>', text)
    for md in DERIVATIONS:
        prose = "".join(page(html_of(site, md)).prose)
        assert "$" not in prose, f"{md.name}: {prose[prose.index('$') - 60:][:140]!r}"


@pytest.mark.parametrize("md", DERIVATIONS, ids=lambda p: p.name)
def test_every_derivation_page_links_its_code(site, md):
    """Every name a derivation cites is a link to the highlighted source of its lines: a
    ``_modules`` page that exists, at an anchor that exists there (a block of viewcode)."""
    built = page(html_of(site, md))
    sources = {}
    for href, classes, _ in built.links:
        if "source-link" in classes:
            target, anchor = built.relative(href)
            assert target.is_file(), f"{md.name}: {href}: no such page"
            assert target.relative_to(site).parts[0] == "_modules", href
            if anchor:
                assert anchor in page(target).ids, f"{md.name}: {href}: no such anchor"
            sources[href] = target
    assert sources, f"{md.name} links to no code"
    linked = set(_link_titles(built.path))
    for name in sorted(set(CITED.findall(md.read_text(encoding="utf-8")))):
        assert name in linked, f"{md.name}: {name} is not a link to its source"


def _link_titles(path):
    """The code names of the source links of a page (their titles: "the source of NAME")."""
    return re.findall(r'class="[^"]*source-link[^"]*"[^>]*title="the source of ([\w.]+)"',
                      path.read_text(encoding="utf-8"))


def test_derivation_sections_list_the_code_that_follows_them(site):
    """Under a section's heading, "In the code:" links each function whose docstring links that
    section, at its lines: derivations/02-gaussian.md's KL section lists the KL, its gradient
    section the KL's backward."""
    text = html_of(site, ROOT / "derivations" / "02-gaussian.md").read_text(encoding="utf-8")
    for anchor, name in (("kl-to-the-standard-normal", "kl_standard_normal"),
                         ("gradient-of-the-kl", "kl_standard_normal_backward")):
        section = text[text.index(f'<section id="{anchor}">'):]
        section = section[:section.index("</section>")]
        heading_end = section.index("</h2>")
        line = re.search(r'<p class="derivation-code">(.*?)</p>', section, re.S)
        assert line and line.start() - heading_end < 20, f"{anchor}: no code line under the heading"
        assert f"_modules/scratchvae/distributions/gaussian.html#{name}\"" in line.group(1), name


def test_docstrings_link_back_to_their_derivation_sections(site):
    """Each documented function's derivation reference is a link to a section that exists;
    ``kl_standard_normal``'s goes to its section of derivations/02-gaussian.md."""
    reference = sorted((site / "docs" / "reference").glob("*.html"))
    count = 0
    for path in reference:
        built = page(path)
        for href, classes, _ in built.links:
            if "derivation-link" in classes:
                target, anchor = built.relative(href)
                assert target.is_file(), f"{path.name}: {href}"
                assert target.parent.name == "derivations", href
                assert not anchor or anchor in page(target).ids, f"{path.name}: {href}"
                count += 1
    assert count > 100, count
    text = (site / "docs" / "reference" / "distributions.html").read_text(encoding="utf-8")
    entry = text[text.index('id="scratchvae.distributions.gaussian.kl_standard_normal"'):]
    entry = entry[:entry.index("</dd>")]
    assert "../../derivations/02-gaussian.html#kl-to-the-standard-normal" in entry
    assert "_modules/scratchvae/distributions/gaussian.html#kl_standard_normal" in entry


def test_gallery_holds_every_example_with_its_figures(site):
    """A card per example linking to its page; each example's page holds the figures its
    cells drew (at least one, except the example that prints a table), and its card the
    first of them."""
    gallery = page(site / "docs" / "gallery.html")
    cards = {}
    for href, _, classes in gallery.links:
        if any("example-card" in c for c in classes):
            target, _ = gallery.relative(href)
            cards[target.stem] = target
    assert sorted(cards) == [p.stem for p in EXAMPLES]
    thumbnails = [src for src, classes in gallery.images
                  if any("example-card" in c for c in classes)]
    for script in EXAMPLES:
        built = page(html_of(site, script))
        figures = [src for src, classes in built.images if any("cell_output" in c for c in classes)]
        for src in figures:
            assert built.relative(src)[0].is_file(), src
        if script.name in DRAWS_NOTHING:  # the table it prints is on the page
            assert "FAIL" in built.path.read_text(encoding="utf-8")
            continue
        assert figures, f"{script.name}: no figure on its page"
        first = built.relative(figures[0])[0].name
        assert any(src.endswith(first) for src in thumbnails), f"{script.name}: no thumbnail"


def test_home_page_is_the_readme_lecture_map(site):
    """index.html sends to the README's page, which holds the lecture map with its links to
    the derivations and examples, and the site's table of contents."""
    assert 'url=README.html"' in (site / "index.html").read_text(encoding="utf-8")
    home = page(site / "README.html")
    assert "The lecture, the code, the derivation, the example" in "".join(home.prose)
    targets = {home.relative(href)[0].relative_to(site).as_posix()
               for href, _, _ in home.links if not urllib.parse.urlsplit(href).scheme}
    for md in DERIVATIONS:
        assert f"derivations/{md.stem}.html" in targets, md.name
    for script in EXAMPLES:
        assert f"examples/{script.stem}.html" in targets, script.name
    for part in ("docs/derivations.html", "docs/gallery.html", "docs/reference/index.html",
                 "docs/api.html", "docs/design.html"):
        assert part in targets, part


def test_api_reference_has_every_module(site):
    """Every module of the package is documented on its folder's page of the reference."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "scratchvae").rglob("*.py")
        if p.name == "__init__.py" or not p.name.startswith("_"))
    ids = set()
    for path in (site / "docs" / "reference").glob("*.html"):
        ids |= page(path).ids
    missing = [m for m in modules if f"module-{m}" not in ids]
    assert not missing, missing


def test_no_link_of_the_site_is_broken(site):
    """Every relative link of every page points to a file that exists and, with an anchor,
    to an id of that page."""
    broken = []
    for path in sorted(site.rglob("*.html")):
        built = page(path)
        for href, _, _ in built.links:
            url = urllib.parse.urlsplit(href)
            if url.scheme or href.startswith("//"):
                continue
            target, anchor = built.relative(href)
            if not target.exists():
                broken.append(f"{path.relative_to(site)}: {href}")
            elif anchor and target.suffix == ".html" and anchor not in page(target).ids:
                broken.append(f"{path.relative_to(site)}: {href} (no such anchor)")
    assert not broken, "\n".join(broken[:40])


# ----------------------------------------------------------------------------- the extension
def extension():
    needs_sphinx()
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import scratchvae_sphinx
    finally:
        sys.path.remove(str(ROOT / "docs"))
    return scratchvae_sphinx


@pytest.mark.parametrize("tex, problem", [
    (r"\frac{a}{b}", None),
    (r"\left( \tfrac12 \{x\} \right]", None),           # escaped braces are not groups
    (r"\begin{aligned} a &= b \end{aligned}", None),
    (r"\frac{a}{b", "never closed"),
    (r"a}", "closes no"),
    (r"\left( x", r"\left"),
    (r"\begin{aligned} a \end{align}", r"\end{align}"),
    (r"\begin{cases} a", "never ended"),
])
def test_tex_problem_finds_each_case(tex, problem):
    found = extension().tex_problem(tex)
    assert (found is None) if problem is None else (problem in found), found


def test_docstrings_are_read_as_plain_text():
    """An indented block under a paragraph is a literal block (a table as written); a list
    item's next paragraph is not; a bar is escaped in prose only; a derivation reference
    becomes a link, also inside a literal span."""
    ext = extension()
    lines = ["Two laws:", "", "    DSFLaw   y = logit(s)", "             3K params", "",
             "- an item", "", "  its second paragraph", "", "|w|^2 and ``|w|``",
             "see derivations/02-gaussian.md#the-kl and ``derivations/03-likelihoods.md``."]
    ext.docstring_links(_App(), "function", "scratchvae.nn.linear.Linear", None, None, lines)
    assert lines[:6] == ["Two laws:", "", "::", "", "    DSFLaw   y = logit(s)",
                         "             3K params"]
    assert "  its second paragraph" in lines and "::" not in lines[7:]
    assert "\\|w\\|^2 and ``|w|``" in lines
    assert lines[-1] == ("see :derivation:`02-gaussian#the-kl` and "
                         ":derivation:`03-likelihoods`.")


class _App:
    class env:  # noqa: N801  (stands for Sphinx's environment)
        docname = "docs/reference/nn"


def test_locate_finds_where_the_code_is():
    """A re-exported name resolves to its defining module; a method, a property and a module
    to theirs; a name that does not exist to None."""
    locate = extension().locate
    assert locate("scratchvae.nn.Linear") == ("scratchvae.nn.linear", "Linear")
    assert locate("scratchvae.models.vae.VAE.elbo") == ("scratchvae.models.vae", "VAE.elbo")
    assert locate("scratchvae.flows.linear.LULinear.weight") == (
        "scratchvae.flows.linear", "LULinear.weight")
    assert locate("scratchvae.flows.spline") == ("scratchvae.flows.spline", None)
    assert locate("scratchvae.flows.spline.no_such_name") is None


def test_the_docs_extra_installs_what_the_build_imports():
    """setup.cfg's [docs] extra names every tool the build imports, and the README names the
    command that builds the site."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extra = config["options.extras_require"]["docs"]
    names = {re.split(r"[<>=!~\[ ]", line.strip())[0].lower()
             for line in extra.splitlines() if line.strip()}
    assert set(DOCS_TOOLS.values()) <= names, set(DOCS_TOOLS.values()) - names
    assert "python docs/build.py" in (ROOT / "README.md").read_text(encoding="utf-8")
