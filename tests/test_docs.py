"""The documentation keeps up with the code: every command and option of the `carto` app is in
docs/cli.md, in that command's own section, and every relative link in the README and docs/ points
to a file (and heading) that exists.

docs/cli.md has one `## \\`carto NAME\\`` section per command (`## \\`carto logs summary\\`` for a
command of a sub-group); an option counts as documented when its name (`--early-epochs`) appears
in that section as a whole word. Options of the app itself (`--version`) may appear anywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from carto_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = ROOT / "docs" / "cli.md"
# The pages whose links are checked: the front page, every page under docs/, the benchmarks' how-to.
LINKED_PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

SECTION = re.compile(r"^## `carto ([a-z][a-z -]*?)`[ \t]*$", re.MULTILINE)


def _commands(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, object]]:
    """(`"logs summary"`, click command) for every leaf command, recursing into sub-groups."""
    found = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        if hasattr(command, "commands"):  # a sub-group such as `carto logs`
            found += _commands(command, path)
        else:
            found.append((" ".join(path), command))
    return found


def _option_names(command) -> list[str]:
    """Long option names (`--out`; both halves of a `--flag/--no-flag` pair) of a click command."""
    names = []
    for param in command.params:
        if param.param_type_name != "option":
            continue
        names += [name for name in (*param.opts, *param.secondary_opts) if name.startswith("--")]
    return names


def _sections(text: str) -> dict[str, str]:
    """docs/cli.md cut at its `## \\`carto NAME\\`` headings: {"score": text of that section}."""
    heads = list(SECTION.finditer(text))
    sections = {}
    for head, following in zip(heads, [*heads[1:], None]):
        end = following.start() if following else len(text)
        rest = text[head.end():end]
        other = re.search(r"^## ", rest, re.MULTILINE)  # a section also ends at any other `## ` heading
        sections[head.group(1).strip()] = rest[: other.start()] if other else rest
    return sections


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


ROOT_GROUP = typer.main.get_command(app)
COMMANDS = _commands(ROOT_GROUP)


def test_the_app_has_the_commands_this_test_expects() -> None:
    """Guards the walk itself: if it found nothing, the tests below would pass vacuously."""
    names = {name for name, _ in COMMANDS}
    assert {"score", "prune", "weights", "log", "logs summary", "logs bucketize", "experiment"} <= names, names


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_command_and_option_is_in_docs_cli(name: str, command) -> None:
    sections = _sections(CLI_DOC.read_text())
    assert name in sections, (
        f"`carto {name}` is not documented: docs/cli.md needs a section headed '## `carto {name}`'"
    )
    missing = [option for option in _option_names(command) if not _mentions(sections[name], option)]
    assert not missing, (
        f"`carto {name}` has option(s) missing from its section of docs/cli.md: {', '.join(missing)}"
    )


def test_options_of_the_app_itself_are_in_docs_cli() -> None:
    text = CLI_DOC.read_text()
    groups = [ROOT_GROUP, *(c for c in ROOT_GROUP.commands.values() if hasattr(c, "commands"))]
    missing = [option for group in groups for option in _option_names(group) if not _mentions(text, option)]
    assert not missing, f"option(s) of `carto` missing from docs/cli.md: {', '.join(missing)}"


def test_docs_cli_documents_no_command_that_does_not_exist() -> None:
    documented = set(_sections(CLI_DOC.read_text()))
    stale = documented - {name for name, _ in COMMANDS}
    assert not stale, f"docs/cli.md documents command(s) the app does not have: {', '.join(sorted(stale))}"


# --- links -------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=\"([^\"]+)\"", re.IGNORECASE)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where `[x](y)` is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _links(text: str) -> list[str]:
    prose = _prose(text)
    return [m.group(1) for pattern in (INLINE_LINK, REFERENCE_LINK, HTML_LINK) for m in pattern.finditer(prose)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """Every anchor a Markdown page offers: its headings' slugs (numbered when repeated) and ids."""
    text = page.read_text()
    anchors, seen = set(), {}
    for match in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", FENCE.sub("", text), re.MULTILINE):
        slug = _slug(match.group(1))
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    anchors |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return anchors


def _is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None  # https:, mailto:, ...


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in _links(page.read_text()):
        if _is_external(target):
            continue
        path_part, _, fragment = target.partition("#")
        path_part = path_part.split("?")[0]
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target} (no file {_shown(destination)})")
        elif fragment and destination.suffix == ".md" and fragment not in _anchors(destination):
            broken.append(f"{target} (no heading #{fragment} in {_shown(destination)})")
    return broken


@pytest.mark.parametrize("page", LINKED_PAGES, ids=[str(p.relative_to(ROOT)) for p in LINKED_PAGES])
def test_every_relative_link_points_to_something_that_exists(page: Path) -> None:
    broken = _broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)} has broken link(s): " + "; ".join(broken)


def test_the_link_checker_sees_links_and_skips_code() -> None:
    text = "See [a](a.md) and ![b](img/b.png 'x').\n\n```\n[c](not-a-link.md)\n```\n`[d](nor-this.md)`\n[e]: e.md\n"
    assert sorted(_links(text)) == ["a.md", "e.md", "img/b.png"]
    assert _slug("`carto logs summary`") == "carto-logs-summary"
    assert _slug("Past memory: 2e8 rows in buckets") == "past-memory-2e8-rows-in-buckets"
