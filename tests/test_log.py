"""loopguard's own JSON-lines sink: complete lines, even with several processes appending."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from loopguard._log import SCHEMA_VERSION, JsonLinesSink

RECORDS_PER_PROCESS = 300
PROCESSES = 4


def _write_records(path: str, worker: int) -> None:
    sink = JsonLinesSink(path)
    try:
        for index in range(RECORDS_PER_PROCESS):
            # Long enough that a torn write would show up as a broken line.
            sink.emit(
                "error", "loopguard.loop_mismatch", {"worker": worker, "i": index, "pad": "x" * 900}
            )
    finally:
        sink.close()


def test_several_processes_append_whole_lines(tmp_path: Path) -> None:
    """4 processes x 300 records of ~1 KiB into one file: every line is one intact record."""
    path = str(tmp_path / "shared.jsonl")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_records, args=(path, n)) for n in range(PROCESSES)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert len(lines) == PROCESSES * RECORDS_PER_PROCESS
    records = [json.loads(line) for line in lines]
    seen = {(r["worker"], r["i"]) for r in records}
    assert len(seen) == PROCESSES * RECORDS_PER_PROCESS
    first = records[0]
    assert first["event"] == "loopguard.loop_mismatch"
    assert first["level"] == "error"
    assert first["schema"] == SCHEMA_VERSION
    assert {"timestamp", "pid"} <= set(first)


def test_sink_repr_and_close_are_safe(tmp_path: Path) -> None:
    """repr names the file; close() twice is harmless and later records are dropped, not raised."""
    sink = JsonLinesSink(str(tmp_path / "x.jsonl"))
    assert repr(sink) == f"<JsonLinesSink {str(tmp_path / 'x.jsonl')!r}>"
    sink.close()
    sink.close()
    sink.emit("warning", "loopguard.loop_mismatch", {"a": 1})
    assert (tmp_path / "x.jsonl").read_text() == ""
