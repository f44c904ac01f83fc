"""The README and the docs pages point only at what exists.

* Every relative link and image (``[text](path)``, ``![alt](path#anchor)``) names a file or
  folder of the repository, and an ``#anchor`` names a heading of that page (GitHub's slugs).
* Every ``emanet SUBCOMMAND`` quoted in code (spans and shell blocks), and every ``--flag``
  quoted after it, exists in the real parser, ``emanet.cli.build_parser()``, walked through
  argparse's subparsers. ``-m emanet.training`` (what ``torchrun`` launches) takes the options
  of ``emanet train``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from emanet.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Code blocks in these languages (or none) are shell commands; Python blocks are not scanned.
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
# Modules run with ``python -m`` (or ``torchrun -m``) that take a subcommand's options.
MODULE_COMMANDS = {"emanet.training": ("train",)}

FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FLAG = re.compile(r"--[A-Za-z0-9][\w-]*")


@dataclass
class Page:
    """A Markdown page split into prose (code removed) and code snippets."""

    lines: list[str]  # the page's lines outside code blocks
    commands: list[str]  # shell code: inline spans and the logical lines of shell blocks


def read_page(text: str) -> Page:
    lines, commands, block, fence = [], [], None, None
    for line in text.splitlines():
        opening = FENCE.match(line)
        if block is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                block = None
            elif block:
                commands.append(line)
            continue
        if opening:
            fence = opening.group(1)
            block = opening.group(2).lower() in SHELL_LANGUAGES
            continue
        commands.extend(match.group(2) for match in SPAN.finditer(line))
        lines.append(line)
    return Page(lines, _join_continuations(commands))


def _join_continuations(lines: list[str]) -> list[str]:
    """Shell lines ending in a backslash joined with the next."""
    joined, pending = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            joined.append(pending + line)
            pending = ""
    return joined + ([pending] if pending else [])


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, spaces
    turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings; a repeated slug gets ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for line in read_page(text).lines:
        heading = HEADING.match(line)
        if heading is None:
            continue
        slug = github_slug(heading.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def link_problems(page_path: Path, text: str) -> list[str]:
    """Relative links of a page that do not resolve to a file (and heading) of the repo."""
    problems = []
    for line in read_page(text).lines:
        for target in LINK.findall(SPAN.sub("", line)):
            if re.match(r"^([a-z][a-z0-9+.-]*:|//)", target, re.IGNORECASE):
                continue  # http:, https:, mailto: ...
            path_part, _, anchor = target.partition("#")
            if not path_part:
                headings = anchors(text)
            elif (path := (page_path.parent / path_part).resolve()).exists():
                headings = (
                    anchors(path.read_text(encoding="utf-8")) if path.suffix == ".md" else None
                )
            else:
                problems.append(f"{target}: no such file {path}")
                continue
            if anchor and headings is not None and anchor not in headings:
                problems.append(f"{target}: no heading #{anchor} in {path_part or page_path.name}")
    return problems


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subparsers of ``parser`` by name (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _quoted_commands(snippet: str):
    """The words after ``emanet`` (up to the end of that command, comments left out) for every
    ``emanet ...`` in a shell snippet; ``-m emanet.training ...`` counts as ``emanet train ...``."""
    snippet = re.split(r"(?:^|\s)#", snippet, maxsplit=1)[0]  # a comment is prose
    for command in re.split(r"&&|\|\||[;|]", snippet):
        tokens = command.split()
        for i, token in enumerate(tokens):
            previous = tokens[i - 1] if i else ""
            if token == "emanet" and previous not in ("import", "from"):
                yield tokens[i + 1 :]
            elif previous == "-m" and token in MODULE_COMMANDS:
                yield [*MODULE_COMMANDS[token], *tokens[i + 1 :]]


def command_problems(text: str, parser: argparse.ArgumentParser) -> list[str]:
    """Subcommands and flags quoted in a page's shell code that the parser does not have."""
    problems = []
    for snippet in read_page(text).commands:
        for words in _quoted_commands(snippet):
            current, path = parser, "emanet"
            while words and subcommands(current):
                name, words = words[0], words[1:]
                choices = subcommands(current)
                if name not in choices:
                    problems.append(f"`{path} {name}`: no such subcommand (in {snippet!r})")
                    break
                current, path = choices[name], f"{path} {name}"
            else:
                known = option_strings(current)
                for word in words:
                    flag = FLAG.search(word)
                    if flag and word.lstrip("[(").startswith("--"):
                        if flag.group() not in known:
                            problems.append(f"`{path}` has no {flag.group()} (in {snippet!r})")
    return problems


@pytest.fixture(scope="module")
def parser():
    """emanet's parser; `emanet app` hands its options to the app, whose parser has them."""
    from emanet.app.__main__ import add_options

    cli = build_parser()
    add_options(subcommands(cli)["app"])
    return cli


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
    assert link_problems(page, page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_quoted_commands_and_flags_exist(page, parser):
    assert command_problems(page.read_text(encoding="utf-8"), parser) == []


def test_docs_pages_are_found():
    assert {"README.md", "docs/model-card.md", "docs/benchmarks.md"} <= set(map(_name, PAGES))


def test_command_check_catches_made_up_subcommands_and_flags(parser):
    text = """
Run `emanet train --preset x --made-up-flag 3` or `emanet frobnicate --out x`.

```bash
emanet data check ROOT --made-up-too
torchrun --nproc_per_node 2 -m emanet.training --preset x \\
    --work-dir w --not-a-train-flag
emanet predict a.png --out r/   # a comment with --not-checked
```

```python
from emanet import Segmenter  # Python is not a shell command
```
"""
    problems = command_problems(text, parser)
    assert len(problems) == 4, problems
    for expected in ("--made-up-flag", "frobnicate", "--made-up-too", "--not-a-train-flag"):
        assert any(expected in problem for problem in problems), expected


def test_command_check_accepts_real_commands(parser):
    text = """
`emanet train --preset p --data d --work-dir w --no-channels-last --resume`

```bash
emanet predict 'a/**/*.png' --out r/ --batch-size=4 [--compile] && emanet models --flops
torchrun --nproc_per_node 4 -m emanet.training --preset p --data d --work-dir w --iters 10
emanet data check ROOT
```
"""
    assert command_problems(text, parser) == []


def test_link_check_catches_missing_files_and_headings(tmp_path):
    (tmp_path / "other.md").write_text("# A title: with `code`, punctuation & more\n## Again\n")
    page = tmp_path / "page.md"
    text = """# Page
[fine](other.md#a-title-with-code-punctuation--more) [fine](#page) ![picture](other.md)
[web](https://example.com/x.md) `[not a link](missing.md)`
[gone](missing.md) [bad anchor](other.md#nowhere) [own](#nothing-here)
"""
    problems = link_problems(page, text)
    assert len(problems) == 3, problems
    assert "missing.md" in problems[0] and "#nowhere" in problems[1] and "#nothing" in problems[2]


def test_github_slugs():
    assert github_slug("Cost: `emanet models --flops`") == "cost-emanet-models---flops"
    assert github_slug("Ablation: mmseg's unit (λ = 1)") == "ablation-mmsegs-unit-λ--1"
    assert anchors("# Setup\n## Setup\n```\n# not a heading\n```\n") == {"setup", "setup-1"}
