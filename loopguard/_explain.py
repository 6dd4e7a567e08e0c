"""``loopguard explain CODE``: a code's documentation in the terminal, offline.

The texts are files of this package (``explanations/LG101.txt`` ...), shipped in the wheel.
docs/_gen.py writes them from the code's section of docs/errors.md, with its examples and
real outputs, as plain text; tests/test_docs.py fails when they are stale.
"""

from __future__ import annotations

import argparse
import pydoc
import sys
from pathlib import Path
from typing import Any, Optional

from ._codes import CODES
from ._errors import docs_section

EXPLANATIONS = Path(__file__).resolve().parent / "explanations"
DESCRIPTION = """\
Print the documentation of an error or warning code, as the docs' error page has it: what
happened, the failing patterns with their real output, and the fixes. It is read from the
installed package: no network, no docs checkout. In a terminal it goes through a pager
($PAGER, as pydoc does)."""
EPILOG = """\
exit status: 0; 2 for a code loopguard does not have (the codes are listed); 1 for a code
this installation has no text for (newer than its documentation)."""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "explain",
        help="print the documentation of a code (LG101 ...), offline",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("code", metavar="CODE", help="a code as messages show it: LG101 (or 101)")
    parser.set_defaults(run=explain)


def normalize_code(text: str) -> str:
    """``lg101``, ``LG101`` and ``101`` all name LG101."""
    text = text.strip().upper()
    return f"LG{text}" if text.isdigit() else text


def explanation(code: str) -> Optional[str]:
    """The shipped text of a known code; None if this installation has none for it."""
    path = EXPLANATIONS / f"{code}.txt"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def code_list() -> str:
    width = max(len(code) for code in CODES)
    return "\n".join(f"  {code:<{width}}  {entry.title}" for code, entry in CODES.items())


def explain(args: argparse.Namespace) -> int:
    code = normalize_code(args.code)
    if code not in CODES:
        print(
            f"loopguard explain: unknown code {args.code!r}; the codes are:\n{code_list()}",
            file=sys.stderr,
        )
        return 2
    text = explanation(code)
    if text is None:  # a code newer than its documentation: say where it will be
        print(
            f"loopguard explain: no text for {code} in this installation; see {docs_section(code)}",
            file=sys.stderr,
        )
        return 1
    if sys.stdout.isatty():
        pydoc.pager(text)
    else:
        sys.stdout.write(text)
    return 0
