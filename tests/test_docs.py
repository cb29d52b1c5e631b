"""The docs cannot drift: generated blocks match the code, every command and head is documented, every link resolves.

The generated parts of ``docs/*.md`` sit between cog markers that call ``docs/_generate.py``. These tests run the
markers' code themselves (with a stand-in for cog's ``cog.out``), so they need nothing beyond the package: a stale
block fails with the command that regenerates it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from facecli.nn.heads import HEADS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
REGENERATE = "cog -r -I docs docs/*.md"
COG_BLOCK = re.compile(r"<!-- \[\[\[cog\n(?P<code>.*?)\]\]\] -->\n(?P<output>.*?)<!-- \[\[\[end\]\]\] -->", re.S)


class _Cog:
    """What the markers use of cog's module: ``cog.out(text)`` appends to the block's output."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def out(self, text: str = "") -> None:
        self.parts.append(text)


@pytest.fixture(scope="module")
def generate() -> Iterator[ModuleType]:
    """docs/_generate.py, importable as ``_generate`` the way ``cog -I docs`` makes it."""
    sys.path.insert(0, str(DOCS))
    try:
        import _generate

        yield _generate
    finally:
        sys.path.remove(str(DOCS))


@pytest.fixture(scope="module")
def blocks(generate: ModuleType) -> list[tuple[str, str, str]]:
    """(page, text in the file, text the markers produce now) for every cog block of docs/*.md."""
    found = []
    for page in PAGES:
        for match in COG_BLOCK.finditer(page.read_text(encoding="utf-8")):
            cog = _Cog()
            exec(match["code"], {"cog": cog})
            fresh = "".join(cog.parts)
            found.append((page.name, match["output"], fresh if fresh.endswith("\n") else fresh + "\n"))
    return found


def test_the_generated_pages_have_their_blocks(blocks: list[tuple[str, str, str]]) -> None:
    assert {"cli-reference.md", "heads.md"} <= {page for page, _, _ in blocks}


def test_generated_blocks_are_up_to_date(blocks: list[tuple[str, str, str]]) -> None:
    stale = [page for page, written, fresh in blocks if written != fresh]
    assert not stale, f"stale generated docs in {', '.join(stale)}: run `{REGENERATE}` from the repository root"


def test_every_command_has_a_section_in_the_cli_reference(generate: ModuleType) -> None:
    text = (DOCS / "cli-reference.md").read_text(encoding="utf-8")
    paths = generate.command_paths()
    assert ("facecli", "gallery", "build") in paths and ("facecli", "pack", "pairs") in paths  # the walk goes deep
    missing = [" ".join(p) for p in paths if f"\n## {' '.join(p)}\n" not in text]
    assert not missing, f"no section in docs/cli-reference.md for: {', '.join(missing)}; run `{REGENERATE}`"


def test_every_registered_head_is_in_the_heads_table() -> None:
    text = (DOCS / "heads.md").read_text(encoding="utf-8")
    missing = [name for name in HEADS.names() if f"\n| `{name}` |" not in text]
    assert not missing, f"heads missing from docs/heads.md: {', '.join(missing)}; run `{REGENERATE}`"


def test_help_has_no_colour_and_a_fixed_width(generate: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference must not depend on the terminal that regenerates it."""
    monkeypatch.setenv("COLUMNS", "60")
    text = generate.command_help(("facecli", "gallery"))
    assert "\x1b[" not in text and text.startswith(" Usage: facecli gallery")
    assert max(len(line) for line in text.splitlines()) == generate.WIDTH
    assert not any(line != line.rstrip() for line in text.splitlines())


# ------------------------------------------------------------------------------------------------ links

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than ``-``/``_`` dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose_lines(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose_lines(path):
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match[1])
            found.add(f"{base}-{counts[base]}" if base in counts else base)
            counts[base] = counts.get(base, 0) + 1
    return found


def test_slug_follows_github() -> None:
    assert slug("Fine-tune a pretrained model: `--init`") == "fine-tune-a-pretrained-model---init"
    assert slug("Fine-tuning for low-resolution faces (`benchmarks/bench_finetune.py`)") == (
        "fine-tuning-for-low-resolution-faces-benchmarksbench_finetunepy")
    assert slug("Your own data: K-Face (AI Hub 한국인 안면 이미지)") == "your-own-data-k-face-ai-hub-한국인-안면-이미지"


LINKED_PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md", *PAGES]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    """Links to files and headings of the repository (web links are not fetched)."""
    broken = []
    for line in prose_lines(page):
        for target in LINK.findall(re.sub(r"`[^`]*`(?!\])", "", line)):
            if re.match(r"[a-z]+:", target):  # https:, mailto: ...
                continue
            file, _, fragment = target.partition("#")
            resolved = (page.parent / file).resolve() if file else page
            if not resolved.exists():
                broken.append(f"{target} (no such file)")
            elif fragment and fragment not in anchors(resolved):
                broken.append(f"{target} (no heading #{fragment} in {resolved.name})")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {'; '.join(broken)}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    orphans = [p.name for p in PAGES if f"](docs/{p.name})" not in readme]
    assert not orphans, f"docs pages the README does not link: {', '.join(orphans)}"


def test_the_python_page_runs_as_written(tmp_path: Path) -> None:
    """docs/python.md's examples, joined in order, run as one script in a folder with 20 people of the bundled LFW
    sample (3 photos each) and the bundled model, exactly as the page says; what it prints is the verbs' output."""
    import shutil
    import subprocess

    sample = REPO / "examples" / "data" / "lfw-sample"
    for person in sorted(p for p in sample.iterdir() if p.is_dir())[:20]:
        (tmp_path / "photos" / person.name).mkdir(parents=True)
        for photo in sorted(person.iterdir())[:3]:
            shutil.copy(photo, tmp_path / "photos" / person.name)
    shutil.copy(REPO / "examples" / "models" / "mobilefacenet.onnx", tmp_path / "model.onnx")
    code = "\n".join(re.findall(r"```python\n(.*?)```", (DOCS / "python.md").read_text(), re.S))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "20 identities, 60 images" in done.stdout
    assert re.search(r"^model\.onnx pairs 0\.9\d+$", done.stdout, re.M)  # the pretrained model recognises them
    assert (tmp_path / "finetuned" / "checkpoint.pt").is_file() and (tmp_path / "report" / "report.json").is_file()
