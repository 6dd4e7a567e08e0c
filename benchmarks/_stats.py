"""Statistics of the paired on/off design, and the samples kept as pyperf benchmarks.

pyperf (the Python standard for benchmark results) serves for what it does well: the
machine's metadata in the header (CPU, frequency, load, ASLR, Python build), and the file
format of the samples, so that a maintainer can look at any row with pyperf's own tools::

    .venv/bin/python benchmarks/run.py --json /tmp/lg-bench
    .venv/bin/python -m pyperf compare_to /tmp/lg-bench/off.json /tmp/lg-bench/raise.json --table
    .venv/bin/python -m pyperf hist /tmp/lg-bench/raise.json

Each arm of a row is a pyperf ``Benchmark`` named after the row (``2 wall``), one ``Run`` per
round: a round is a set of fresh processes, which is what pyperf's runs are.

What pyperf does not have stays here: the verdicts are on *paired* differences and ratios
(samples of the arms taken in turn within milliseconds of each other), which can be negative
(pyperf's values cannot), and on a confidence interval of their median (order statistics).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

try:
    import pyperf
except ImportError:  # a one-line error, exit status 2 (an error, not a failed target)
    print("benchmarks/run.py needs pyperf: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
    raise SystemExit(2) from None

# -- the paired design ----------------------------------------------------------------------


def quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    """(q1, median, q3), linear interpolation between order statistics (as pyperf's
    ``Benchmark.percentile``, which takes positive values only)."""
    s = sorted(values)
    if not s:
        return (math.nan, math.nan, math.nan)

    def q(p: float) -> float:
        k = (len(s) - 1) * p
        f = math.floor(k)
        c = min(f + 1, len(s) - 1)
        return s[f] + (s[c] - s[f]) * (k - f)

    return q(0.25), q(0.5), q(0.75)


def median(values: Sequence[float]) -> float:
    return quartiles(values)[1]


def median_ci(values: Sequence[float]) -> Tuple[float, float]:
    """A 95% confidence interval for the median (order statistics, no assumed distribution).

    The number of values below the true median is binomial(n, 1/2): the interval runs from
    the k-th smallest value to the k-th largest, with the largest k for which
    P(binomial < k) <= 2.5% (n = 10: 2nd to 9th; n = 150: 63rd to 88th).
    """
    ordered = sorted(values)
    n = len(ordered)
    k, below = 0, 0.0  # below: P(binomial(n, 1/2) <= k - 1)
    while k < n // 2 and below + math.comb(n, k) / 2**n <= 0.025:
        below += math.comb(n, k) / 2**n
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


# -- formatting -----------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    a = abs(seconds)
    if a < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if a < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def fmt_stat(values: Sequence[float], fmt: Callable[[float], str] = fmt_time) -> str:
    q1, med, q3 = quartiles(values)
    return f"{fmt(med)} [{fmt(q1).split()[0]}..{fmt(q3)}]" if len(values) > 1 else fmt(med)


def fmt_diff(values: Sequence[float]) -> str:
    q1, med, q3 = quartiles(values)

    def us(x: float) -> str:
        return f"{x * 1e6:+.2f}"

    if len(values) == 1:
        return f"{us(med)} us"
    return f"{us(med)} us [{us(q1)}..{us(q3)}]"


def fmt_ratio(values: Sequence[float]) -> str:
    q1, med, q3 = quartiles(values)
    if len(values) == 1:
        return f"x{med:.3f}"
    return f"x{med:.3f} [{q1:.3f}..{q3:.3f}]"


def fmt_bytes(n: float) -> str:
    if abs(n) < 10 * 1024:
        return f"{n:,.0f} B"
    return f"{n / 1024:,.1f} KiB"


# -- pyperf: metadata and the samples' files --------------------------------------------------

_METADATA: Dict[str, object] = {}


def machine_metadata() -> Dict[str, object]:
    """What pyperf records about the machine and the interpreter (collected once)."""
    if not _METADATA:
        probe = pyperf.Run([1.0], metadata={"name": "probe"}, collect_metadata=True)
        _METADATA.update(pyperf.Benchmark([probe]).get_metadata())
        _METADATA.pop("name", None)
        _METADATA.pop("mem_max_rss", None)  # the probe's, not the benchmark's
    return _METADATA


def machine_lines() -> List[str]:
    """The header's machine lines, from pyperf's metadata."""
    md = machine_metadata()

    def show(key: str) -> str:
        return pyperf.format_metadata(key, md[key]) if key in md else "?"

    return [
        f"machine: {show('cpu_count')} CPUs ({show('cpu_model_name')}, {show('cpu_freq')}), "
        f"load average {show('load_avg_1min')}, ASLR {show('aslr')}, {show('platform')}",
        f"python: {show('python_implementation')} {show('python_version')} "
        f"({show('python_executable')})",
    ]


class Samples:
    """Every row's samples per arm, as pyperf benchmarks (one run per round)."""

    def __init__(self) -> None:
        self._by_arm: Dict[str, Dict[str, pyperf.Benchmark]] = {}

    def add(self, row: str, arm: str, rounds: Sequence[Sequence[float]], unit: str) -> None:
        """``rounds``: the values of each round (``unit``: second, byte or integer).  Rows
        whose values pyperf cannot hold (zero or negative) are left out of the files."""
        if not rounds or any(v <= 0 for values in rounds for v in values):
            return
        metadata = dict(machine_metadata(), name=row, unit=unit, loops=1)
        runs = [
            pyperf.Run(list(values), metadata=metadata, collect_metadata=False)
            for values in rounds
            if values
        ]
        self._by_arm.setdefault(arm, {})[row] = pyperf.Benchmark(runs)

    def dump(self, directory: Path) -> List[Path]:
        """One pyperf file per arm (``off.json``, ``raise.json``, ...): compare two with
        ``python -m pyperf compare_to off.json raise.json``."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for arm, benchmarks in self._by_arm.items():
            path = directory / f"{arm}.json"
            pyperf.BenchmarkSuite(list(benchmarks.values())).dump(str(path), replace=True)
            written.append(path)
        return written


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def optional_float(text: Optional[str]) -> Optional[float]:
    return float(text) if text else None
