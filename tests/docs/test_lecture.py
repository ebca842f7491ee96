"""docs/lecture.md runs as written, and every section shows something and cites its figures.

How the page is run (``test_the_lecture_runs``):

- In page order, in a temporary working directory holding a link to the repository's
  ``configs/`` (so ``visionlab train configs/...`` reads the real recipes, and what the
  commands write lands in the temporary folder), with ``VISIONLAB_HOME`` there too.
- Every ```` ```python ```` block runs with ``exec``. The blocks of one ``##`` section share
  one namespace, a fresh one at each section, seeded with ``OUT``: the folder the pictures
  go (``docs/lecture`` under the temporary folder). Tracebacks name the page's own lines.
- Every line of a ```` ```bash ```` / ```` ```console ```` block is a ``visionlab ...``
  command (or a comment), run as ``visionlab.cli.main(shlex.split(line)[1:])`` and
  required to exit with 0. ```` ```text ```` blocks (the long runs whose figures the page
  cites from benchmarks/) are not run.
- The pictures the page shows from ``docs/lecture/`` must be the ones its snippets wrote,
  each under 100 KB. ``LECTURE_PICTURES=1`` copies them into the repository's
  ``docs/lecture/`` (how the committed pictures are made).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "lecture.md"
PICTURES = "lecture"  # the page's pictures, relative to docs/
MAX_PICTURE_BYTES = 100_000
COMMAND_LANGS = {"bash", "console"}
RUN_LANGS = COMMAND_LANGS | {"python"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    line: int  # the page's line number of the block's first line of code
    code: str


def read_page() -> tuple[list[Block], dict[str, str]]:
    """The fenced blocks in page order, and the text of each ``##`` section."""
    blocks: list[Block] = []
    sections: dict[str, list[str]] = {"(introduction)": []}
    section, lang, start, code = "(introduction)", None, 0, []
    for number, line in enumerate(PAGE.read_text().splitlines(), start=1):
        if lang is None and line.startswith("```"):
            lang, start, code = line[3:].strip(), number + 1, []
        elif lang is not None and line.startswith("```"):
            blocks.append(Block(section, lang, start, "\n".join(code)))
            lang = None
        elif lang is not None:
            code.append(line)
        elif line.startswith("## "):
            section = line[3:].strip()
            sections[section] = []
        if lang is None or line.startswith("```"):
            sections[section].append(line)
    assert lang is None, f"docs/lecture.md: the block opened on line {start - 1} never closes"
    return blocks, {name: "\n".join(lines) for name, lines in sections.items()}


def commands(block: Block) -> list[tuple[int, str]]:
    """``(page line, command)`` of every command line of a bash / console block."""
    out = []
    for offset, line in enumerate(block.code.splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert line.startswith("visionlab "), (
            f"docs/lecture.md:{block.line + offset}: only `visionlab ...` lines run here; "
            f"put other commands in a ```text block: {line}"
        )
        out.append((block.line + offset, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_lecture_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    from visionlab.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISIONLAB_HOME", str(tmp_path / "home"))
    (tmp_path / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    out = tmp_path / "docs" / PICTURES
    out.mkdir(parents=True)
    blocks, _ = read_page()
    namespaces: dict[str, dict] = {}
    for block in blocks:
        if block.lang == "python":
            namespace = namespaces.setdefault(block.section, {"OUT": out, "__name__": "lecture"})
            # leading newlines: a traceback names the page's own line numbers
            code = compile("\n" * (block.line - 1) + block.code, str(PAGE), "exec")
            exec(code, namespace)
        elif block.lang in COMMAND_LANGS:
            for line, command in commands(block):
                argv = shlex.split(command, comments=True)[1:]
                assert main(argv) == 0, f"docs/lecture.md:{line}: `{command}` failed"
    text = PAGE.read_text()
    shown = sorted(set(re.findall(rf"\]\({PICTURES}/([\w.-]+\.png)\)", text)))
    assert shown, "the page shows no picture of its own"
    for name in shown:
        path = out / name
        assert path.is_file(), f"docs/lecture.md shows {PICTURES}/{name}, which no snippet wrote"
        assert path.stat().st_size < MAX_PICTURE_BYTES, f"{name}: {path.stat().st_size} bytes"
    if os.environ.get("LECTURE_PICTURES"):
        target = PAGE.parent / PICTURES
        target.mkdir(exist_ok=True)
        for name in shown:
            shutil.copyfile(out / name, target / name)


def test_every_section_runs_something_and_cites_a_figure() -> None:
    blocks, sections = read_page()
    for name in sections:
        if name == "(introduction)":
            continue
        runnable = [b for b in blocks if b.section == name and b.lang in RUN_LANGS]
        assert runnable, f"section {name!r} has no snippet or command the test runs"
        links = LINK.findall(sections[name])
        figures = [x for x in links if x.startswith(("../benchmarks/", f"{PICTURES}/"))]
        assert figures, f"section {name!r} links no benchmark file and shows no picture"
    assert {b.lang for b in blocks} <= RUN_LANGS | {"text"}, "unknown block languages"


def test_links_resolve_and_pictures_are_committed() -> None:
    text = PAGE.read_text()
    for link in LINK.findall(text):
        if "://" in link:
            continue
        path, _, anchor = link.partition("#")
        target = (PAGE.parent / path).resolve()
        assert target.exists(), f"docs/lecture.md links {link}: no such file"
        if anchor:
            headings = [
                ln.lstrip("#") for ln in target.read_text().splitlines() if ln.startswith("#")
            ]
            assert anchor in {slug(h) for h in headings}, f"{link}: no such section"
    shown = set(re.findall(rf"\]\({PICTURES}/([\w.-]+\.png)\)", text))
    committed = {p.name for p in (PAGE.parent / PICTURES).glob("*.png")}
    assert shown == committed, f"shown but not committed: {shown - committed}; " + (
        f"committed but not shown: {committed - shown}"
    )
    for name in committed:
        assert (PAGE.parent / PICTURES / name).stat().st_size < MAX_PICTURE_BYTES, name
