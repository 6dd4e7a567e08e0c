"""Reading ``LOOPGUARD_LOG_FILE`` back for ``loopguard report``.

Which events loopguard writes and where each keeps the facts the report shows (its creation
site, the test, the loops), and the checks that make a damaged line a reported bad line, never
a crash: a line that is not a JSON object, a record without its key fields, a field of the
wrong type.  Records are read one at a time: memory does not grow with the file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Callable, NamedTuple, Optional

from ._causes import EXPLANATIONS
from ._codes import CODES, EVENT_LOOP_MISMATCH
from ._log import SCHEMA_VERSION

PROG = "loopguard report"
MAX_BAD_LINES = 10  # per file and kind of problem: a wrong file must not flood stderr

LoopFields = tuple[Any, ...]


def _loop_move(pid: Any, owner: Any, current: Any) -> str:
    return f"#{owner}->" + (f"#{current}" if current is not None else "no loop")


@dataclasses.dataclass(frozen=True)
class Kind:
    """What the report reads in the records of one event."""

    site: tuple[str, str]  # the fields naming where it was created: file:line, function
    url: Optional[str]  # the field with the engine's URL or the pool's DSN (else: "name")
    resource: str  # the field saying what it is
    test: str  # the field naming the test running when the record was written
    bound: Optional[str]  # the field naming the test during which it was bound to its loop
    loop_fields: tuple[str, ...]  # the loop facts, listed once per distinct value
    loop_text: Callable[..., str]  # those facts in words, from loop_fields' values
    # Records without a cause (LG104, LG105, LG106): one explanation for the code.
    explanation: Optional[tuple[str, str]] = None

    @functools.cached_property
    def required(self) -> tuple[str, ...]:
        """The fields without which a record is bad input (an object registered with
        loopguard.track() has a ``name``, or nothing, where an engine has its ``url``)."""
        return ("code", *self.site, "action")


_MOVE = ("pid", "owner_loop_id", "current_loop_id")
_ENGINE_SITE = ("created_at", "created_in")

KINDS: dict[str, Kind] = {
    # LG101 (SQLAlchemy), LG103 (raw asyncpg), LG107 (loopguard.track()); their cause is in
    # each record.
    EVENT_LOOP_MISMATCH: Kind(
        _ENGINE_SITE, "url", "resource", "used_during", "bound_during", _MOVE, _loop_move
    ),
    CODES["LG102"].event: Kind(
        _ENGINE_SITE,
        "url",
        "resource",
        "created_during",
        None,
        ("pid", "owner_loop_id"),
        lambda pid, owner: f"#{owner}, captured at create_pool()",
    ),
    CODES["LG104"].event: Kind(
        _ENGINE_SITE,
        "url",
        "resource",
        "used_during",
        "bound_during",
        _MOVE,
        _loop_move,
        EXPLANATIONS["LG104"],
    ),
    CODES["LG106"].event: Kind(
        _ENGINE_SITE,
        "url",
        "resource",
        "used_during",
        "bound_during",
        ("pid", "owner_loop_id"),
        lambda pid, owner: f"#{owner} closed",
        EXPLANATIONS["LG106"],
    ),
    # LG105: the fixture is what the report groups by
    CODES["LG105"].event: Kind(
        ("fixture_at", "fixture"),
        None,
        "value",
        "used_during",
        None,
        ("pid", "fixture_loop_scope", "test_loop_scope"),
        lambda pid, fixture, tests: f"{fixture} loop scope->{tests}",
        EXPLANATIONS["LG105"],
    ),
}

# The type of each field the report reads; null is allowed too (action is checked apart: a
# string, never null).
FIELD_TYPES: dict[str, type] = {
    **dict.fromkeys(
        (
            "code",
            "resource",
            "url",
            "created_at",
            "created_in",
            "created_during",
            "created_by",
            "created_via",
            "bound_during",
            "checked_out_during",
            "used_during",
            "cause",
            "fixture",
            "fixture_at",
            "fixture_loop_scope",
            "test_loop_scope",
            "value",
            "name",
        ),
        str,
    ),
    **dict.fromkeys(("pid", "owner_loop_id", "current_loop_id"), int),
}
_TYPE_NAMES = {str: "a string", int: "an integer"}


class Entry(NamedTuple):
    """One record as the report reads it, whatever its event."""

    kind: Kind
    key: tuple[Optional[str], ...]  # what the report groups by: event, code, site and url
    action: str
    resource: Optional[str]
    test: Optional[str]
    bound: tuple[Optional[str], ...]  # empty when the event has no such field
    loop: LoopFields
    cause: Optional[str]


def _bad_fields(record: dict[str, Any]) -> list[str]:
    """A phrase for each field of the wrong type: ``pid is a list (expected an integer or
    null)``."""
    bad = []
    for field, expected in FIELD_TYPES.items():
        value = record.get(field)
        # bool is an int to isinstance(), not to the records.
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            bad.append(f"{field} is {_json_type(value)} (expected {_TYPE_NAMES[expected]} or null)")
    action = record.get("action", "")
    if not isinstance(action, str):
        bad.append(f"action is {_json_type(action)} (expected a string)")
    return bad


def _json_type(value: Any) -> str:
    """The JSON type of a parsed value, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    names = {dict: "an object", list: "a list", str: "a string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def entry(event: str, kind: Kind, record: dict[str, Any]) -> Entry:
    """The facts the report needs from a valid record of ``event``."""
    get = record.get
    url = (get(kind.url) or get("name")) if kind.url else None
    return Entry(
        kind,
        (event, get("code"), get(kind.site[0]), get(kind.site[1]), url),
        record["action"],
        get(kind.resource),
        get(kind.test),
        (get(kind.bound),) if kind.bound else (),
        tuple(get(field) for field in kind.loop_fields),
        get("cause"),
    )


class Inputs:
    """Reads loopguard records from files (``-`` is stdin); reports bad input on stderr."""

    def __init__(self) -> None:
        self.bad = False

    def problem(self, message: str) -> None:
        self.bad = True
        print(message, file=sys.stderr)

    def entries(self, paths: Iterable[str]) -> Iterator[Entry]:
        for path in paths:
            name = "<stdin>" if path == "-" else path
            try:
                if path == "-":
                    yield from self._parse(name, sys.stdin)
                else:
                    with open(path, encoding="utf-8", errors="replace") as lines:
                        yield from self._parse(name, lines)
            except OSError as exc:
                self.problem(f"{PROG}: cannot read {name}: {exc.strerror or exc}")

    def _parse(self, name: str, lines: Iterable[str]) -> Iterator[Entry]:
        not_json = bad_records = 0
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
                not_json += 1
                if not_json <= MAX_BAD_LINES:
                    self.problem(f"{name}:{number}: not a JSON object ({reason})")
                continue
            event = record.get("event")
            kind = KINDS.get(event) if isinstance(event, str) else None
            if kind is None:
                continue  # the application's own records may share the stream
            schema = record.get("schema")
            if isinstance(schema, int) and schema > SCHEMA_VERSION and schema not in newer:
                newer.add(schema)
                print(
                    f"{name}:{number}: schema {schema}: written by a newer loopguard (this one "
                    f"reads schema {SCHEMA_VERSION}); reporting the fields it knows",
                    file=sys.stderr,
                )
            missing = [key for key in kind.required if key not in record]
            bad = _bad_fields(record)
            if missing or bad:
                bad_records += 1
                if bad_records <= MAX_BAD_LINES:
                    problems = [f"without {', '.join(missing)}"] if missing else []
                    problems += [f"with bad fields: {'; '.join(bad)}"] if bad else []
                    self.problem(f"{name}:{number}: loopguard record {', and '.join(problems)}")
                continue
            yield entry(event, kind, record)
        if not_json > MAX_BAD_LINES:
            self.problem(f"{name}: {not_json - MAX_BAD_LINES} more lines that are not JSON objects")
        if bad_records > MAX_BAD_LINES:
            self.problem(
                f"{name}: {bad_records - MAX_BAD_LINES} more loopguard records with missing or "
                "bad fields"
            )
