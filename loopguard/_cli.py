"""The ``loopguard`` command (also ``python -m loopguard``).

``loopguard report LOGFILE...`` summarises the records of ``LOOPGUARD_LOG_FILE`` by engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional

from . import _run
from ._errors import docs_link
from ._log import EVENT_LOOP_MISMATCH, SCHEMA_VERSION
from ._report import ASYNCPG_CAUSES, CAUSES

PROG = "loopguard"
GROUP_BY = ("code", "created_at", "created_in", "url")
REQUIRED = (*GROUP_BY, "action")
MAX_BAD_LINES = 10  # per file: a wrong file (a plain-text log) must not flood stderr
MAX_SHOWN = 3  # loops and binding tests listed per engine in table and markdown
PROSE = ("cause", "fix")  # the table wraps these details at 100 columns
COLUMNS = ("#", "count", "actions", "code", "created")
DETAILS = ("engine", "first test", "last test", "bound during", "loops", "cause", "fix", "docs")
CODE_CELLS = ("created", "engine", "first test", "last test", "bound during")
REPORT_EPILOG = """\
exit status: 2 when some input is bad (a file that cannot be read, a line that is not a JSON
object, a loopguard record without its key fields), after reporting every record that could
be read; otherwise 1 when a record reaches --fail-on; otherwise 0. Lines of other events are
ignored. Records of a newer schema (a newer loopguard wrote them) are reported with the
fields this loopguard knows."""


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _add_unique(values: list[Any], value: Any) -> None:
    if value not in values:
        values.append(value)


def _some(items: list[str]) -> str:
    more = f", ... (+{len(items) - MAX_SHOWN} more)" if len(items) > MAX_SHOWN else ""
    return ", ".join(items[:MAX_SHOWN]) + more


def _cause(key: str, resource: Optional[str] = None) -> dict[str, Optional[str]]:
    """A cause key with its text and fix; both None for a key this loopguard does not know.

    Raw asyncpg records (LG103) explain the same keys for a pool or a connection.
    """
    if resource and resource.startswith("asyncpg"):
        kind = "pool" if resource.endswith("Pool") else "connection"
        text, fix = ASYNCPG_CAUSES.get((kind, key)) or (None, None)
    else:
        text, fix = CAUSES.get(key) or (None, None)
    return {"cause": key, "text": text, "fix": fix}


@dataclasses.dataclass
class Group:
    """The records of one engine: same code, creation site and URL, in file order."""

    code: Optional[str]
    created_at: Optional[str]
    created_in: Optional[str]
    url: Optional[str]
    count: int = 0
    actions: dict[str, int] = dataclasses.field(default_factory=dict)
    first_test: Optional[str] = None
    last_test: Optional[str] = None
    bound_during: list[Optional[str]] = dataclasses.field(default_factory=list)
    loops: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    causes: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._resource: Optional[str] = None  # what the causes are about; not reported

    def add(self, record: dict[str, Any]) -> None:
        self._resource = self._resource or _text(record.get("resource"))
        self.count += 1
        action = str(record["action"])
        self.actions[action] = self.actions.get(action, 0) + 1
        test = _text(record.get("used_during"))
        if test:
            self.first_test = self.first_test or test
            self.last_test = test
        _add_unique(self.bound_during, _text(record.get("bound_during")))
        _add_unique(
            self.loops, {k: record.get(k) for k in ("pid", "owner_loop_id", "current_loop_id")}
        )
        if record.get("cause") is not None:
            _add_unique(self.causes, str(record["cause"]))

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "causes": self._explained_causes()}

    def _explained_causes(self) -> list[dict[str, Optional[str]]]:
        return [_cause(key, self._resource) for key in self.causes]

    def cells(self, number: int) -> dict[str, str]:
        """The group as display text, by column name."""
        # Loop ids are counted per process: name the process when the records come from several.
        several = len({loop["pid"] for loop in self.loops}) > 1
        moves = [
            (f"pid {loop['pid']}: " if several else "")
            + f"#{loop['owner_loop_id']}->#{loop['current_loop_id']}"
            for loop in self.loops
        ]
        causes = self._explained_causes()
        created = f"{self.created_at} in {self.created_in}"
        return {
            "#": str(number),
            "count": str(self.count),
            "actions": ", ".join(f"{n} {action}" for action, n in self.actions.items()),
            "code": self.code or "?",
            "created": created if self.created_at else "creation site unknown",
            "engine": self.url or "?",
            "first test": self.first_test or "-",
            "last test": self.last_test or "-",
            "bound during": _some([b or "outside any test" for b in self.bound_during]),
            "loops": _some(moves),
            "cause": "; ".join(f"{c['cause']}: {c['text'] or 'unknown cause'}" for c in causes),
            "fix": " / ".join(filter(None, (c["fix"] for c in causes))) or "see the docs",
            "docs": docs_link(self.code or "?"),
        }


class Inputs:
    """Reads loopguard records from files (``-`` is stdin); reports bad input on stderr."""

    def __init__(self) -> None:
        self.bad = False

    def problem(self, message: str) -> None:
        self.bad = True
        _say(message)

    def records(self, paths: Iterable[str]) -> Iterator[dict[str, Any]]:
        for path in paths:
            name = "<stdin>" if path == "-" else path
            try:
                if path == "-":
                    yield from self._parse(name, sys.stdin)
                else:
                    with open(path, encoding="utf-8", errors="replace") as lines:
                        yield from self._parse(name, lines)
            except OSError as exc:
                self.problem(f"{PROG} report: cannot read {name}: {exc.strerror or exc}")

    def _parse(self, name: str, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
        bad_lines = 0
        newer: set[int] = set()
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                reason = "" if isinstance(record, dict) else f"found {type(record).__name__}"
            except (ValueError, RecursionError) as exc:
                reason = str(exc)
            if reason:
                bad_lines += 1
                if bad_lines <= MAX_BAD_LINES:
                    self.problem(f"{name}:{number}: not a JSON object ({reason})")
                continue
            if record.get("event") != EVENT_LOOP_MISMATCH:
                continue  # the application's own records may share the stream
            schema = record.get("schema")
            if isinstance(schema, int) and schema > SCHEMA_VERSION and schema not in newer:
                newer.add(schema)
                _say(
                    f"{name}:{number}: schema {schema}: written by a newer loopguard (this one "
                    f"reads schema {SCHEMA_VERSION}); reporting the fields it knows"
                )
            missing = [key for key in REQUIRED if key not in record]
            if missing:
                self.problem(f"{name}:{number}: loopguard record without {', '.join(missing)}")
                continue
            yield record
        if bad_lines > MAX_BAD_LINES:
            _say(f"{name}: {bad_lines - MAX_BAD_LINES} more lines that are not JSON objects")


def group_records(records: Iterable[dict[str, Any]]) -> list[Group]:
    groups: dict[tuple[Optional[str], ...], Group] = {}
    for record in records:
        code, created_at, created_in, url = (_text(record[k]) for k in GROUP_BY)
        key = (code, created_at, created_in, url)
        if key not in groups:
            groups[key] = Group(code, created_at, created_in, url)
        groups[key].add(record)
    return list(groups.values())


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


def summary(groups: list[Group]) -> str:
    total, actions = sum(g.count for g in groups), Counter[str]()
    for group in groups:
        actions.update(group.actions)
    engines = f"{len(groups)} engine{'s' * (len(groups) != 1)}"
    done = ", ".join(f"{n} {action}" for action, n in actions.items())
    return f"{total} loopguard record{'s' * (total != 1)} ({done}) from {engines}"


def report(args: argparse.Namespace) -> int:
    inputs = Inputs()
    groups = group_records(inputs.records(args.logfiles))
    if args.format == "json":
        print(json.dumps([g.as_dict() for g in groups], indent=2))
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    report_parser = commands.add_parser(
        "report",
        help="summarise LOOPGUARD_LOG_FILE records by engine",
        description="Summarise loopguard.loop_mismatch records (the JSON lines written to\n"
        "LOOPGUARD_LOG_FILE) by engine: code, creation site and URL.",
        epilog=REPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report_parser.set_defaults(run=report)
    _run.add_parser(commands)
    report_parser.add_argument("logfiles", nargs="+", metavar="LOGFILE", help="- reads stdin")
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
        "record; the default) or never",
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
