"""Every derivation renders on GitHub and under Pandoc's rules for TeX math.

Pandoc (and GitHub, which follows it closely) reads ``$...$`` as inline math only if the
opening ``$`` has a non-space character right after it, the closing ``$`` a non-space
character right before it and no digit right after it; and an inline span that is cut by a
source line break is easy to break further when a paragraph is rewrapped, and some renderers
refuse it. Display math ``$$...$$`` may span lines. Code (fenced blocks and backtick spans)
is not math.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DERIV = sorted((ROOT / "derivations").glob("*.md"))
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")
TOKEN = re.compile(r"\$\$|\$")


def math_problems(text: str) -> list[str]:
    """``"line N: what"`` for each inline span that will not render; the scanner behind the
    test, itself tested on small strings below."""
    problems, in_fence, in_display, carried = [], False, False, False
    for no, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line.replace("\\$", "  "))
        open_at = None
        for m in TOKEN.finditer(line):
            if carried and m.group(0) == "$":  # closes the span reported on the line above
                carried = False
                continue
            if m.group(0) == "$$":
                if open_at is None:
                    in_display = not in_display
                continue
            if in_display:
                continue
            if open_at is None:
                open_at = m.end()
                continue
            body, after = line[open_at:m.start()], line[m.end():m.end() + 1]
            if not body.strip():
                problems.append(f"line {no}: empty inline math")
            elif body != body.strip():
                problems.append(f"line {no}: space just inside ${body}$")
            elif after.isdigit():
                problems.append(f"line {no}: digit right after the closing $ of ${body}$")
            open_at = None
        if open_at is not None:
            problems.append(f"line {no}: inline math runs onto the next line: "
                            f"{line[open_at - 1:].strip()}")
            carried = True
    return problems


@pytest.mark.parametrize("md", DERIV, ids=lambda p: p.name)
def test_inline_math_renders(md):
    problems = math_problems(md.read_text())
    assert not problems, f"{md.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("text, expected", [
    ("a $x$ b", []),
    ("a $x $ b", ["space just inside"]),
    ("a $ x$ b", ["space just inside"]),
    ("a $x +\ny$ b", ["runs onto the next line"]),
    ("$$\na + $b$\n$$\n$c$", []),                # display math spans lines; $ inside it is TeX
    ("`$ not math $` and \\$5 and $y$", []),    # code spans and escaped dollars are not math
    ("```\n$ x $\n```", []),                     # fenced code is not math
    ("costs $n$2 each", ["digit right after"]),
])
def test_math_problems_finds_each_case(text, expected):
    got = math_problems(text)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert e in g
