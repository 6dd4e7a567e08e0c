"""docs/tested-versions.md, pyproject.toml and loopguard's refusals agree with the nox matrix."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import tested_versions

from loopguard.integrations import _sqlalchemy

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def matrix() -> ModuleType:
    return tested_versions.load_matrix()


@pytest.fixture(scope="module")
def project() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]  # type: ignore[no-any-return]


def test_the_committed_table_is_generated_from_the_noxfile(matrix: ModuleType) -> None:
    """Edit noxfile.py, then run `python tools/tested_versions.py`: the docs follow."""
    committed = tested_versions.OUTPUT.read_text()
    assert committed == tested_versions.render(matrix), (
        "docs/tested-versions.md is stale: run `python tools/tested_versions.py`"
    )


def test_the_matrix_covers_every_line_with_every_python(matrix: ModuleType) -> None:
    """check_covering() accepts the matrix; it rejects one that lost the only session of a
    line on a Python, and one that asks for a line its Python cannot install."""
    matrix.check_covering(matrix.MATRIX)
    without_floor = [row for row in matrix.MATRIX if row.name != "floor"]
    with pytest.raises(
        AssertionError, match=r"does not cover: \[\('3.9', 'pytest-asyncio', '0.21'\)"
    ):
        matrix.check_covering(without_floor)
    impossible = matrix.Row("3.9", "2.1", "1.x", "newest", name="impossible")
    with pytest.raises(AssertionError, match="a SQLAlchemy line their Python lacks"):
        matrix.check_covering([*matrix.MATRIX, impossible])


def _floor(project: dict[str, object], dist: str) -> str:
    requirements: list[str] = list(project["dependencies"])  # type: ignore[call-overload]
    for extra in project["optional-dependencies"].values():  # type: ignore[attr-defined]
        requirements += extra
    floors: set[str] = set()
    for requirement in requirements:
        name = requirement.split(">=")[0].split("[")[0].strip().lower()
        if name == dist:
            floors.add(requirement.split(">=")[1].split(",")[0].split(";")[0].strip())
    assert len(floors) == 1, (dist, floors)
    return floors.pop()


@pytest.mark.parametrize(
    "dist",
    [
        "sqlalchemy",
        "asyncpg",
        "pytest",
        "pytest-asyncio",
        "structlog",
        "httpx",
        "aiohttp",
        "redis",
        "psycopg-pool",
    ],
)
def test_pyproject_floors_are_the_floor_session(
    matrix: ModuleType, project: dict[str, object], dist: str
) -> None:
    """Every lower bound pyproject.toml declares is what the `floor` session installs."""
    pins = {matrix._dist(pin): pin.split("==")[1] for pin in matrix.FLOOR_PINS}
    declared = _floor(project, dist)
    assert pins[dist].startswith(declared), (dist, declared, pins[dist])
    assert pins[dist] == declared or pins[dist] == declared + ".0"


def test_refused_sqlalchemy_is_below_the_floor(matrix: ModuleType) -> None:
    pins = {matrix._dist(pin): pin.split("==")[1] for pin in matrix.FLOOR_PINS}
    assert ".".join(map(str, _sqlalchemy.MIN_VERSION)) == pins["sqlalchemy"]


def test_python_classifiers_and_requires_python_are_the_matrix(
    matrix: ModuleType, project: dict[str, object]
) -> None:
    classifiers = project["classifiers"]
    declared = [
        c.rsplit(" :: ", 1)[1]
        for c in classifiers  # type: ignore[attr-defined]
        if c.startswith("Programming Language :: Python :: 3.")
    ]
    assert declared == matrix.PYTHONS
    assert project["requires-python"] == f">={matrix.PYTHONS[0]}"
    assert {row.python for row in matrix.MATRIX} == set(matrix.PYTHONS)


def test_refused_redis_is_below_the_floor(matrix: ModuleType) -> None:
    from loopguard.integrations import _redis

    pins = {matrix._dist(pin): pin.split("==")[1] for pin in matrix.FLOOR_PINS}
    assert ".".join(map(str, _redis.MIN_VERSION)) == pins["redis"]
