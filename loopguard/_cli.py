"""The ``loopguard`` command (also ``python -m loopguard``).

``loopguard report LOGFILE...`` summarises the records of ``LOOPGUARD_LOG_FILE`` by engine;
``loopguard run`` (``_run``) runs a program guarded; ``loopguard explain CODE`` (``_explain``)
prints a code's documentation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from . import __version__, _explain, _run
from ._causes import cause_for
from ._codes import CODES
from ._errors import where_to_read
from ._log_reader import Entry, Inputs

PROG = "loopguard"
MAX_SHOWN = 3  # loops and binding tests listed per engine in table and markdown
PROSE = ("cause", "fix")  # the table wraps these details at 100 columns
COLUMNS = ("#", "count", "actions", "code", "created")
DETAILS = ("engine", "first test", "last test", "bound during", "loops", "cause", "fix", "docs")
CODE_CELLS = ("created", "engine", "first test", "last test", "bound during")
REPORT_DESCRIPTION = """\
Summarise the records loopguard writes to LOOPGUARD_LOG_FILE (JSON lines), one group per
code and engine (or pool, redis client, or pytest fixture for LG105): where it was created,
its URL, how many records and of which action, the tests and loops involved, the cause and
the fix."""


def _actions() -> str:
    """Which codes' records have which action, from the table of codes."""
    raising = ", ".join(c.code for c in CODES.values() if c.raises)
    warning = ", ".join(c.code for c in CODES.values() if c.warning and not c.raises)
    records = ", ".join(c.code for c in CODES.values() if not (c.warning or c.raises))
    text = (
        f"actions: raised ({raising} in raise mode), warned (the same in warn mode; {warning} "
        f"in any mode), released or reported ({records}: records only). --fail-on raise counts "
        "the raised records, warn counts every record, whatever its action."
    )
    return textwrap.fill(text, 92, break_on_hyphens=False)


REPORT_EPILOG = (
    _actions()
    + """

exit status: 2 when some input is bad (a file that cannot be read, a line that is not a JSON
object, a loopguard record without its key fields or with a field of the wrong type), after
reporting every record that could be read; otherwise 1 when a record reaches --fail-on;
otherwise 0. Lines of other events are ignored. Records of a newer schema (a newer loopguard
wrote them) are reported with the fields this loopguard knows."""
)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _some(items: Iterable[str], total: int) -> str:
    """The first MAX_SHOWN of ``total`` items, and how many more there are."""
    more = f", ... (+{total - MAX_SHOWN} more)" if total > MAX_SHOWN else ""
    return ", ".join(itertools.islice(items, MAX_SHOWN)) + more


def _cause(key: Optional[str], resource: Optional[str] = None) -> dict[str, Optional[str]]:
    """A cause key with its text and fix, worded for the resource (an engine, an asyncpg pool
    or connection, ...); both None for a key this loopguard does not know."""
    cause = cause_for(resource or "", key or "")
    text, fix = cause if cause is not None else (None, None)
    return {"cause": key, "text": text, "fix": fix}


class Group:
    """The records of one engine: same event, code, creation site and URL, in file order.

    Repeated values (binding tests, loops, causes) are kept once, in insertion-ordered dicts:
    adding a record costs the same whatever the number of records before it.
    """

    def __init__(self, first: Entry) -> None:
        self.kind = first.kind
        self.code, self.created_at, self.created_in, self.url = first.key[1:]
        self.resource: Optional[str] = None
        self.count = 0
        self.actions: dict[str, int] = {}
        self.first_test: Optional[str] = None
        self.last_test: Optional[str] = None
        self.bound_during: dict[Optional[str], None] = {}
        self.loops: dict[tuple[Any, ...], None] = {}
        self.causes: dict[str, None] = {}

    def add(self, entry: Entry) -> None:
        self.resource = self.resource or entry.resource
        self.count += 1
        self.actions[entry.action] = self.actions.get(entry.action, 0) + 1
        if entry.test:
            self.first_test = self.first_test or entry.test
            self.last_test = entry.test
        for bound in entry.bound:
            self.bound_during[bound] = None
        self.loops[entry.loop] = None
        if entry.cause is not None:
            self.causes[entry.cause] = None

    def as_dict(self) -> dict[str, Any]:
        fields = self.kind.loop_fields
        return {
            "code": self.code,
            "created_at": self.created_at,
            "created_in": self.created_in,
            "url": self.url,
            "resource": self.resource,
            "count": self.count,
            "actions": self.actions,
            "first_test": self.first_test,
            "last_test": self.last_test,
            "bound_during": list(self.bound_during),
            "loops": [dict(zip(fields, loop)) for loop in self.loops],
            "causes": self._explained_causes(),
        }

    def _explained_causes(self) -> list[dict[str, Optional[str]]]:
        if not self.causes and self.kind.explanation:
            text, fix = self.kind.explanation
            return [{"cause": None, "text": text, "fix": fix}]
        return [_cause(key, self.resource) for key in self.causes]

    def cells(self, number: int) -> dict[str, str]:
        """The group as display text, by column name."""
        # Loop ids are counted per process: name the process when the records come from several.
        several = len({loop[0] for loop in self.loops}) > 1
        moves = (
            (f"pid {loop[0]}: " if several else "") + self.kind.loop_text(*loop)
            for loop in self.loops
        )
        bound = (b or "outside any test" for b in self.bound_during)
        causes = self._explained_causes()
        created = f"{self.created_at} in {self.created_in}"
        return {
            "#": str(number),
            "count": str(self.count),
            "actions": ", ".join(f"{n} {action}" for action, n in self.actions.items()),
            "code": self.code or "?",
            "created": created if self.created_at else "creation site unknown",
            "engine": self.url or self.resource or "?",
            "first test": self.first_test or "-",
            "last test": self.last_test or "-",
            "bound during": _some(bound, len(self.bound_during)) or "-",
            "loops": _some(moves, len(self.loops)),
            "cause": "; ".join(
                f"{c['cause']}: {c['text'] or 'unknown cause'}" if c["cause"] else str(c["text"])
                for c in causes
            ),
            "fix": " / ".join(filter(None, (c["fix"] for c in causes))) or "see the docs",
            "docs": where_to_read(self.code) if self.code else "-",
        }


def group_records(entries: Iterable[Entry]) -> list[Group]:
    """Groups by code (LG101 first), each code's groups in the order they first appear."""
    groups: dict[tuple[Optional[str], ...], Group] = {}
    for entry in entries:
        group = groups.get(entry.key)
        if group is None:
            group = groups[entry.key] = Group(entry)
        group.add(entry)
    return sorted(groups.values(), key=lambda group: (group.code is None, group.code or ""))


def render_table(groups: list[Group]) -> str:
    """An aligned index of the engines, then each engine's details."""
    rows = [{c: c.upper() for c in COLUMNS}, *(g.cells(n) for n, g in enumerate(groups, 1))]
    widths = {c: max(len(row[c]) for row in rows) for c in COLUMNS}
    lines = ["  ".join(row[c].ljust(widths[c]) for c in COLUMNS).rstrip() for row in rows]
    wrap = textwrap.TextWrapper(
        100, subsequent_indent=" " * 18, break_long_words=False, break_on_hyphens=False
    )
    for cells in rows[1:]:
        lines += ["", f"[{cells['#']}] {cells['code']} {cells['created']}"]
        for label in DETAILS:
            line = f"    {label + ':':<14}{cells[label]}"
            lines.append(wrap.fill(line) if label in PROSE else line)
    return "\n".join(lines)


def render_markdown(groups: list[Group]) -> str:
    """A GitHub table, one row per engine."""

    def cell(column: str, text: str) -> str:
        if column in CODE_CELLS and "`" not in text:
            text = f"`{text}`"
        return text.replace("\n", " ").replace("|", "\\|")

    columns = (*COLUMNS, *DETAILS[:-1])
    lines = [
        "| " + " | ".join(c.capitalize() for c in columns) + " |",
        "|" + "|".join("--:" if c in ("#", "count") else "---" for c in columns) + "|",
    ]
    for number, group in enumerate(groups, 1):
        cells = group.cells(number)
        lines.append("| " + " | ".join(cell(c, cells[c]) for c in columns) + " |")
    return "\n".join(lines)


def _noun(resource: Optional[str]) -> str:
    """What a group is counted as: an engine (also the word for pools, fixtures and records
    without a resource, as before), or a client."""
    return "client" if (resource or "").lower().endswith("client") else "engine"


def summary(groups: list[Group]) -> str:
    total, actions = sum(g.count for g in groups), Counter[str]()
    for group in groups:
        actions.update(group.actions)
    nouns = Counter(_noun(group.resource) for group in groups)
    engines = " and ".join(f"{n} {noun}{'s' * (n != 1)}" for noun, n in nouns.items())
    engines = engines or "0 engines"
    done = ", ".join(f"{n} {action}" for action, n in actions.items())
    return f"{total} loopguard record{'s' * (total != 1)} ({done}) from {engines}"


def report(args: argparse.Namespace) -> int:
    inputs = Inputs()
    groups = group_records(inputs.entries(args.logfiles))
    if args.format == "json":
        json.dump([g.as_dict() for g in groups], sys.stdout, indent=2)  # written in chunks
        print()
    if not groups:
        # Keep stdout parseable in json format.
        print("no loopguard records", file=sys.stderr if args.format == "json" else sys.stdout)
    elif args.format != "json":
        render = render_markdown if args.format == "markdown" else render_table
        print(f"{summary(groups)}\n\n{render(groups)}")
    counts = {
        "warn": sum(g.count for g in groups),
        "raise": sum(g.actions.get("raised", 0) for g in groups),
    }
    failing = counts.get(args.fail_on, 0)
    if failing:
        _say(f"{PROG} report: {failing} record(s) at or above --fail-on={args.fail_on}")
    return 2 if inputs.bad else 1 if failing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="loopguard command line tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    report_parser = commands.add_parser(
        "report",
        help="summarise LOOPGUARD_LOG_FILE records by engine",
        description=REPORT_DESCRIPTION,
        epilog=REPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report_parser.set_defaults(run=report)
    _run.add_parser(commands)
    _explain.add_parser(commands)
    report_parser.add_argument(
        "logfiles",
        nargs="+",
        metavar="LOGFILE",
        help='a JSON-lines file written through LOOPGUARD_LOG_FILE; "-" reads standard input',
    )
    report_parser.add_argument(
        "--format",
        choices=("table", "json", "markdown"),
        default="table",
        help="output format (default: table)",
    )
    report_parser.add_argument(
        "--fail-on",
        choices=("warn", "raise", "never"),
        default="raise",
        help="exit 1 when a record is at this level: warn (any record), raise (a raised "
        "record; the default) or never (see actions below)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``loopguard`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except BrokenPipeError:  # `loopguard report ... | head`: the reader has what it wants
        # Point stdout at devnull so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status
