"""README.md is the short entry point and docs/ holds the topics (issue 26 item 6): README stays short, and no
Markdown link, anchor or section reference (in the docs, the measurement notes or the code) points at a file or
heading that is not there. Reads files only; no torch, no network."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 300
# directories that hold no project files (caches, runs, virtualenvs, build outputs)
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".benchmarks", "runs", "outputs",
             "multirun", "wandb", "logs", "build", "dist", "node_modules"}
CODE_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".ipynb"}

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
CODE_SPAN = re.compile(r"`+[^`]*`+")
# section references in code: README.md#anchor, README "Section", README's "Section", README, "Section"
README_ANCHOR = re.compile(r"(?<![\w./-])README\.md#([\w-]+)")
README_SECTION = re.compile(r"(?<![\w./-])README(?:\.md)?(?:'s)?,?\s+(?:section\s+)?[\"“]([^\"”\n]+)[\"”]")
DOCS_REF = re.compile(r"(?<![\w./-])(docs/[\w.-]+\.md)(?:#([\w-]+))?")


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "bench" / "results").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation but '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path, cache: dict[Path, set[str]] = {}) -> set[str]:  # noqa: B006 (a per-process cache)
    """Every heading anchor of a Markdown file; repeated headings get -1, -2, ... as on GitHub."""
    if path not in cache:
        seen: dict[str, int] = {}
        found = set()
        for _, line in prose_lines(path):
            match = HEADING.match(line)
            if not match:
                continue
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        cache[path] = found
    return cache[path]


def check_target(source: Path, target: str, root: Path) -> str | None:
    """Why a relative link target from ``source`` is broken, or None."""
    path_part, _, anchor = target.partition("#")
    if not path_part:
        dest = source
    elif path_part.startswith("/"):
        dest = root / path_part.lstrip("/")
    else:
        dest = source.parent / path_part
    dest = dest.resolve()
    try:
        dest.relative_to(root.resolve())
    except ValueError:
        return "points outside the repository"
    if not dest.exists():
        return "no such file"
    if anchor:
        if dest.is_dir() or dest.suffix != ".md":
            return "an anchor into a file that is not Markdown"
        if anchor not in anchors(dest):
            return f"no heading #{anchor} in {dest.relative_to(root.resolve())}"
    return None


def broken_links(files: list[Path], root: Path = ROOT) -> list[str]:
    broken = []
    for path in files:
        for number, line in prose_lines(path):
            text = CODE_SPAN.sub("", line)
            targets = INLINE_LINK.findall(text)
            match = REFERENCE_LINK.match(text)
            if match:
                targets.append(match.group(1))
            for target in targets:
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
                    continue
                why = check_target(path, target, root)
                if why:
                    broken.append(f"{path.relative_to(root)}:{number}: ({target}) {why}")
    return broken


def code_files() -> list[Path]:
    this = Path(__file__).resolve()
    out = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        if path.suffix in CODE_SUFFIXES and path.is_file() and path.resolve() != this:
            out.append(path)
    return out


def code_text(path: Path) -> list[tuple[int, str]]:
    """(line, text) of a code file; a notebook's cells, numbered by cell (its JSON escapes quotes)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".ipynb":
        return [(1, text)]
    cells = json.loads(text).get("cells", [])
    return [(i, "".join(cell.get("source", []))) for i, cell in enumerate(cells, 1)]


def broken_code_references(files: list[Path], root: Path = ROOT) -> list[str]:
    readme = root / "README.md"
    broken = []
    for path in files:
        rel = path.relative_to(root)
        for first, text in code_text(path):
            def where(match: re.Match) -> str:
                if path.suffix == ".ipynb":
                    return f"{rel}: cell {first}"
                return f"{rel}:{text.count(chr(10), 0, match.start()) + first}"

            for match in README_ANCHOR.finditer(text):
                if match.group(1) not in anchors(readme):
                    broken.append(f"{where(match)}: README.md#{match.group(1)} is no heading of README.md")
            for match in README_SECTION.finditer(text):
                if slug(match.group(1)) not in anchors(readme):
                    broken.append(f'{where(match)}: README "{match.group(1)}" is no heading of README.md')
            for match in DOCS_REF.finditer(text):
                page, anchor = root / match.group(1), match.group(2)
                if not page.is_file():
                    broken.append(f"{where(match)}: {match.group(1)} does not exist")
                elif anchor and anchor not in anchors(page):
                    broken.append(f"{where(match)}: no heading #{anchor} in {match.group(1)}")
    return broken


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move topics to docs/ (at most {README_MAX_LINES})"


def test_slug_follows_github():
    assert slug("Near-duplicates, quality filters, Slurm arrays") == "near-duplicates-quality-filters-slurm-arrays"
    assert slug("The order does not depend on `train.steps`") == "the-order-does-not-depend-on-trainsteps"
    assert slug("Planning 32K-128K") == "planning-32k-128k"
    assert slug("qwen2, qwen2.5, qwen3") == "qwen2-qwen25-qwen3"
    assert slug("`train.py` against a bare megatron-core loop") == "trainpy-against-a-bare-megatron-core-loop"
    assert slug("How it was checked (tests/unit/test_tokenizer_qwen35.py)") == "how-it-was-checked-testsunittest_tokenizer_qwen35py"


def fake_repository(root: Path) -> None:
    """A README and a docs page with links and references that each break in one way."""
    (root / "docs").mkdir()
    (root / "README.md").write_text("# Project\n\n## Configuration\n\n[ok](docs/page.md#same-name-1)\n", encoding="utf-8")
    (root / "docs" / "page.md").write_text(
        "# Page\n\n## Same name\n\n## Same name\n\n[a](nothing-here.md) [b](../README.md#no-such-section)\n"
        "[c](#same-name-1) [d](#same-name-2) [e](../../outside.md) [f](https://example.com/x.md#y)\n"
        "```\n[g](in-a-code-block.md)\n```\n[h]: ../README.md#configuration\n[i]: ../README.md#nope\n",
        encoding="utf-8")
    (root / "tool.py").write_text('# see README "No such section" and README.md#configuration, README "Configuration"\n'
                                  '"""docs/page.md#same-name, docs/page.md#nope, docs/nope.md"""\n', encoding="utf-8")


def test_markdown_links_resolve(tmp_path):
    files = markdown_files()
    assert {f.name for f in files} >= {"README.md", "CHANGELOG.md"} and len(files) > 5, files
    assert broken_links(files) == []

    # the check can fail, naming file, line, target and why
    fake_repository(tmp_path)
    assert broken_links([tmp_path / "README.md", tmp_path / "docs" / "page.md"], tmp_path) == [
        "docs/page.md:7: (nothing-here.md) no such file",
        "docs/page.md:7: (../README.md#no-such-section) no heading #no-such-section in README.md",
        "docs/page.md:8: (#same-name-2) no heading #same-name-2 in docs/page.md",
        "docs/page.md:8: (../../outside.md) points outside the repository",
        "docs/page.md:13: (../README.md#nope) no heading #nope in README.md",
    ]


def test_section_references_in_code_resolve(tmp_path):
    files = code_files()
    assert any(f.name == "config.py" for f in files) and any(f.suffix == ".ipynb" for f in files), files
    assert broken_code_references(files) == []

    fake_repository(tmp_path)
    assert broken_code_references([tmp_path / "tool.py"], tmp_path) == [
        'tool.py:1: README "No such section" is no heading of README.md',
        "tool.py:2: no heading #nope in docs/page.md",
        "tool.py:2: docs/nope.md does not exist",
    ]


def test_ci_runs_readme_test_command():
    """.ci/run runs README.md's test command verbatim: the line after its marker is a line of README."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = ci[ci.index("# --- README.md test command ---") + 1]
    assert command == "pip install -q -e '.[dev]' && python -m pytest -q"
    assert command in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
