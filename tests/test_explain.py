"""``loopguard explain CODE``: each code's section of docs/errors.md in the terminal, from
the text shipped in the package (checked here against the page, in the built wheel, through
the pager in a terminal), and the command every message's Background line names.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_docs import ROOT, gen
from test_report_cli import Run, run  # noqa: F401 (the fixture)

from loopguard._codes import CODES
from loopguard._errors import background


@pytest.mark.parametrize("code", sorted(CODES))
def test_explain_prints_the_section_of_the_error_page(run: Run, code: str) -> None:  # noqa: F811
    """The text is the code's section as plain text: its headings, prose, example files and
    real outputs, without the page's generator markers or code fences."""
    result = run("explain", code)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == gen.explanations()[code]
    section = "\n".join(gen.code_sections(gen.ERRORS_PAGE.read_text("utf-8"))[code])
    assert result.stdout.startswith(f"{code}\n=====\n\n")
    for example in re.findall(r"<!-- gen:file:(\S+) -->", section):
        assert f"`docs_examples/{example}`" in result.stdout
        first_line = (gen.EXAMPLES / example).read_text("utf-8").splitlines()[0]
        assert f"\n    {first_line}\n" in result.stdout
    for name in re.findall(r"<!-- gen:output:(\S+) -->", section):
        assert f"\n    $ {gen.RUNS[name].command}\n" in result.stdout
    assert "<!--" not in result.stdout and "```" not in result.stdout


def test_explain_accepts_the_code_in_any_case_or_as_a_number(run: Run) -> None:  # noqa: F811
    texts = {run("explain", spelling).stdout for spelling in ("LG103", "lg103", "103")}
    assert texts == {gen.explanations()["LG103"]}


def test_explain_unknown_code_lists_the_codes(run: Run) -> None:  # noqa: F811
    """A code loopguard does not have: exit status 2, and every code with its title."""
    result = run("explain", "LG999")
    assert (result.returncode, result.stdout) == (2, "")
    lines = result.stderr.splitlines()
    assert lines[0] == "loopguard explain: unknown code 'LG999'; the codes are:"
    assert [line.split()[0] for line in lines[1:]] == list(CODES)
    for line, entry in zip(lines[1:], CODES.values()):
        assert line.endswith(f"  {entry.title}")


def test_explain_in_a_terminal_goes_through_the_pager(tmp_path: Path) -> None:
    """In a terminal the text goes to $PAGER, as pydoc's help does (here a pager that saves
    what it is given)."""
    paged = tmp_path / "paged.txt"
    environ = {k: v for k, v in os.environ.items() if k != "MANPAGER"}
    environ.update(PAGER=f"cat > {shlex.quote(str(paged))}", TERM="xterm")
    controller, terminal = os.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "loopguard", "explain", "LG104"],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env=environ,
            timeout=60,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 0
    assert paged.read_text("utf-8") == gen.explanations()["LG104"]


def test_every_background_line_shown_names_a_command_that_explains_its_code(
    run: Run,  # noqa: F811
) -> None:
    """The messages in the docs' real outputs end with a Background line; the command it
    names prints that code's section, and the line is the one loopguard writes."""
    named = set()
    for page in gen.pages():
        for body in gen.blocks(page).values():
            for what, code in re.findall(
                r"\(Background on this (\w+): `loopguard explain (\w+)`", body
            ):
                named.add(code)
                assert background(code, what) in body
    assert named, "no Background line in the docs' outputs"
    for code in sorted(named):
        result = run("explain", code)
        assert result.returncode == 0 and result.stdout == gen.explanations()[code]


def test_the_wheel_ships_the_texts(tmp_path: Path) -> None:
    """Built as pip builds it, the wheel holds every text, and ``loopguard explain`` run from
    the unpacked wheel (not this checkout) prints them."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("*.whl")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("loopguard/explanations/")}
        archive.extractall(unpacked)
    assert shipped == {f"loopguard/explanations/{code}.txt" for code in gen.explanations()}
    environ = {**os.environ, "PYTHONPATH": str(unpacked)}
    done = subprocess.run(
        [sys.executable, "-m", "loopguard", "explain", "LG102"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == gen.explanations()["LG102"]
    where = subprocess.run(
        [sys.executable, "-c", "import loopguard; print(loopguard.__file__)"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.startswith(str(unpacked)), where.stdout
