"""The ``scratchvae`` command line.

Every mistake a user can make ends in one line on stderr saying what was wrong and what was
expected, and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


class UsageError(ValueError):
    """A user-facing error: printed as one line, exit code 2."""


def cmd_gradcheck(args) -> int:
    from . import gradcheck

    results = gradcheck.run_checks(args.component or None, seed=args.seed)
    print(gradcheck.format_table(results))
    return 0 if all(r.ok for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scratchvae", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("gradcheck", help="check every hand-derived gradient and log-det")
    g.add_argument("component", nargs="*", help="components (or prefixes such as 'nn')")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_gradcheck)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"scratchvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
