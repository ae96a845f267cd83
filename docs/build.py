"""Build the documentation site: ``python docs/build.py`` (tools: ``pip install ".[docs]"``).

Runs Sphinx on the repository (configuration: docs/conf.py) with warnings as errors, every
page read afresh (an incremental build would not repeat the warnings of the pages it does not
read again): a broken link, a derivation's code name with no source to link to, a docstring
linking a derivation section that does not exist, a formula that cannot render, an example
that fails to execute, each stops the build with a non-zero exit code, after all of them are
reported. The examples are executed in fast mode. The site is written to build/docs/html
(``--out DIR`` to change it); open its index.html. docs/site.md says more.

    python docs/build.py                 # the site, every example executed (minutes)
    python docs/build.py --no-execute    # the same without executing the examples (seconds):
                                         # the gallery then has no figures
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "docs",
                        help="folder of the build: the site goes to OUT/html "
                             "(default: build/docs)")
    parser.add_argument("--no-execute", action="store_true",
                        help="do not execute the examples (a quick build for the prose, the "
                             "API and the links; the gallery has no figures)")
    parser.add_argument("--jobs", default="1",
                        help="Sphinx's -j: processes that read and write the pages (default: 1)")
    args = parser.parse_args(argv)
    try:
        from sphinx.cmd.build import build_main
    except ImportError:
        print('docs/build.py: Sphinx is not installed: python -m pip install ".[docs]"',
              file=sys.stderr)
        return 2
    out = args.out.resolve()
    sphinx_args = ["-b", "html", "-c", str(DOCS), "-d", str(out / "doctrees"),
                   "-E", "-W", "--keep-going", "-q", "-j", args.jobs]
    if args.no_execute:
        sphinx_args += ["-D", "nb_execution_mode=off"]
    start = time.monotonic()
    status = build_main([*sphinx_args, str(ROOT), str(out / "html")])
    seconds = time.monotonic() - start
    if status == 0:
        print(f"docs/build.py: the site is in {out / 'html'} (open index.html); "
              f"built in {seconds:.0f} s")
    else:
        print(f"docs/build.py: the build failed after {seconds:.0f} s (warnings are errors)",
              file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
