"""The results table: one Row per measurement, verdicts against the targets."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from _env import log
from _stats import Samples

ARM_TITLES = {"off": "off", "raise": "loopguard raise", "debug": "asyncio debug"}


class Row:
    """One line of the table: the arms' cells, the comparison, the target and verdict."""

    def __init__(
        self,
        key: str,
        title: str,
        cells: Dict[str, str],
        compare: str = "",
        compare_debug: str = "",
        target: str = "",
        verdict: Optional[bool] = None,
        note: str = "",
        ci: Optional[Tuple[float, float]] = None,
        limit: Optional[float] = None,
    ) -> None:
        # A timed target is judged on a median: with ``ci`` (its 95% confidence interval)
        # and ``limit``, a verdict whose interval straddles the limit is "unresolved".
        self.ci = ci
        self.limit = limit
        self.key = key
        self.title = title
        self.cells = cells
        self.compare = compare
        self.compare_debug = compare_debug
        self.target = target
        self.verdict = verdict
        self.note = note


class Report:
    """The rows of a run, in order; logs each as it is added."""

    def __init__(self, check_targets: bool) -> None:
        self.rows: List[Row] = []
        self.notes: List[str] = []
        self.check_targets = check_targets
        self.samples = Samples()  # every arm's values, for --json (pyperf files)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        verdict = self.verdict_text(row)
        log(
            f"  -> {row.key} {row.title}: "
            + "; ".join(f"{ARM_TITLES.get(k, k)} {v}" for k, v in row.cells.items())
            + (f"; loopguard vs off {row.compare}" if row.compare else "")
            + (f"; debug vs off {row.compare_debug}" if row.compare_debug else "")
            + (f"; target {row.target} {verdict}" if row.target else "")
        )

    def verdict_text(self, row: Row) -> str:
        if not row.target or row.verdict is None:
            return ""
        if not self.check_targets:
            return "(not checked)"
        if self.unresolved(row):
            return "UNRESOLVED (the 95% CI straddles the target)"
        return "PASS" if row.verdict else "FAIL"

    @staticmethod
    def unresolved(row: Row) -> bool:
        """The median is on one side of the limit, but its confidence interval on both."""
        if row.ci is None or row.limit is None:
            return False
        low, high = row.ci
        return low <= row.limit < high

    def failures(self) -> List[Row]:
        return [r for r in self.rows if r.target and r.verdict is False and not self.unresolved(r)]

    def unresolved_rows(self) -> List[Row]:
        return [r for r in self.rows if r.target and r.verdict is not None and self.unresolved(r)]

    def table(self) -> str:
        head = [
            "#",
            "measurement",
            "off",
            "loopguard raise",
            "asyncio debug",
            "loopguard vs off",
            "debug vs off",
            "target",
            "result",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [
                r.key,
                r.title + (f" ({r.note})" if r.note else ""),
                r.cells.get("off", ""),
                r.cells.get("raise", ""),
                r.cells.get("debug", ""),
                r.compare,
                r.compare_debug,
                r.target,
                self.verdict_text(r),
            ]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines)
