"""The reference cannot drift from the code: README.md, ARCHITECTURE.md, CONTRIBUTING.md and docs/*.md name only files
and Python modules that exist, and show only `adm` sub-commands and `--flags` that the commands' parsers accept
(pipelines.cli.main.build_parser, as `adm` builds it); ARCHITECTURE.md's tag table is the one of
pipelines/infra/tags.py.
Fast: reads files and builds the parser; starts nothing.

What counts as named:

* a file path: any token (in prose, `code`, code blocks) whose first folder is one of the repository's top-level
  entries (`components/guided.py`, `bench/RESULTS.md`, `cluster/kuberay/rayjob.yaml`; `*` globs must match); a path
  of source code (.py, .sh, .yaml, .toml) written from a sub-folder or bare (`stages/sample.py`, `tags.py`) must end
  some file of the repository; links are resolved from the page's folder. Paths of what adm writes (`adm-work/...`,
  `plots/fid_vs_scale.png`, `report.md`) are not the repository's and are left alone;
* a Python module: a dotted name under components, pipelines, tests, bench or scripts (`components.config.grid`,
  `pipelines.stages.sample`, optionally one attribute defined in it: `components.config.presets.RELEASED_FLAGS`), and
  what ```python blocks import;
* a command: `adm ...` in `code` or on a line of a code block. Each sub-command must exist (`a|b` lists
  alternatives); each `--flag` after it must be an option of that sub-command (for `adm submit` / `adm schedule`:
  of theirs or of the command they wrap). A `--flag` in `code` on its own must be an option of one of the `adm`
  commands the page shows (or of `adm` itself: `--debug`).
"""

import argparse
import ast
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

from pipelines.cli.main import build_parser
from pipelines.ops.jobs import COMMANDS as SUBMITTABLE

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / name for name in ("README.md", "ARCHITECTURE.md", "CONTRIBUTING.md")] + sorted(
    (ROOT / "docs").glob("*.md"))
# what adm and its users write into a checkout (the commands' default folders, stores): not the repository's files
RUNTIME = {".git", "adm-work", "adm-data", "adm-samples", "adm-storage", "mlflow.db", "mlruns", "mlartifacts"}
TOP = {p.name for p in ROOT.iterdir()} - RUNTIME
SOURCE_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".toml"}
PACKAGES = ("components", "pipelines", "tests", "bench", "scripts")
WRAPS = {"submit": ("run", set(SUBMITTABLE)), "schedule": ("retrain", {"retrain"})}  # default, and what may follow

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
DOTTED = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+$")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*$")


def repo_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for top in TOP if (ROOT / top).is_dir()
                  for p in (ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts)


FILES = repo_files()


# --- pages as prose blocks and code blocks -------------------------------------------------------------------------
def split_page(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(prose blocks: paragraphs, list items and table rows; code blocks as (language, text))."""
    code = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    prose = FENCE.sub("\n\n", text)
    blocks, current = [], []
    for line in prose.splitlines():
        starts = re.match(r"\s*([-*]|\d+\.|\|)\s", line) or line.startswith("#")
        if not line.strip() or starts:
            if current:
                blocks.append("\n".join(current))
            current = []
        if line.strip():
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    return [block.replace("\n", " ") for block in blocks], code  # a `code` span may wrap to the next line


def command_lines(code: str) -> list[str]:
    """The shell lines of a code block: continuations joined, comments dropped, split at && ; | ||."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)
        out += [part for part in re.split(r"\s(?:&&|\|\||;|\|)\s|;$", line) if part.strip()]
    return out


def words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an apostrophe in prose
        return text.split()


# --- file paths ----------------------------------------------------------------------------------------------------
def clean(token: str) -> str:
    """A token as a path: Markdown and punctuation around it stripped, the value of NAME=VALUE."""
    token = token.split("=")[-1]
    while token and (token[0] in "`\"'([{*" or token[-1] in "`\"')]},;:!?*."):
        token = token[1:] if token[0] in "`\"'([{*" else token[:-1]
    return token


def path_problem(token: str) -> str | None:
    """Why `token`, if it names a file of the repository, names none (None: it exists, or names no such file)."""
    token = clean(token)
    if not token or "://" in token or ":/" in token or any(c in token for c in "<>{}$|@~"):
        return None  # URLs, runs:/ and models:/ references, placeholders, shell
    if token.startswith(("/", "-", ".")) and not token.startswith(".ci/"):
        return None  # absolute paths (another machine's), flags, ./ paths of what adm writes
    first = token.split("/")[0]
    if first in TOP and ("/" in token or Path(token).suffix):
        if "*" in token:
            return None if any(ROOT.glob(token)) else f"{token} matches no file"
        return None if (ROOT / token).exists() else f"{token} does not exist"
    if "*" not in token and Path(token).suffix in SOURCE_SUFFIXES and re.fullmatch(r"[\w./-]+", token):
        if not any(f == token or f.endswith("/" + token) for f in FILES):
            return f"{token} is no file of the repository"
    return None


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if target and "://" not in target and not target.startswith("mailto:"):
            if not (page.parent / target).exists():
                problems.append(f"link {target} does not exist (from {page.parent.relative_to(ROOT)}/)")
    return problems


# --- Python modules ------------------------------------------------------------------------------------------------
def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def defined_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level, and those of its __all__."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                names |= {e.value for e in node.value.elts}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def module_problem(dotted: str, names=()) -> str | None:
    """Why `dotted` (a module, or a module and one name defined in it) or `names` imported from it do not exist."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        path = module_file(parts[:i])
        if path is not None:
            break
    else:
        return f"{dotted}: no such module"
    missing = [n for n in [*parts[i:], *names] if not (n in defined_names(path) or module_file(parts[:i] + [n]))]
    if len(parts) - i > 1 or missing:
        return f"{dotted}: {'.'.join(parts[:i])} has no {', '.join(missing or parts[i:])}"
    return None


def python_problems(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return [f"python block does not parse: {e}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            problems.append(module_problem(node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            problems += [module_problem(a.name) for a in node.names if a.name.split(".")[0] in PACKAGES]
    return [p for p in problems if p]


# --- adm commands --------------------------------------------------------------------------------------------------
@cache
def parser() -> argparse.ArgumentParser:
    return build_parser()


def subcommands(p: argparse.ArgumentParser) -> dict:
    return next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})


def accepts(p: argparse.ArgumentParser, flag: str) -> bool:
    return flag.split("=")[0] in p._option_string_actions


def placeholder(word: str) -> bool:
    return word.startswith(("<", "[", "{")) or "..." in word or (word.isupper() and len(word) > 1)


def check_command(argv: list[str]) -> tuple[list[str], list[argparse.ArgumentParser]]:
    """Problems of `adm ARGV`, and the parsers its flags belong to (empty when a placeholder hides the command).
    A flag must be accepted by every alternative sub-command (`list|show`), or by the command `adm submit` or
    `adm schedule` wraps."""
    shown = "adm " + " ".join(argv)
    parsers, wrapped, path, problems = [parser()], None, [], []
    for word in argv:
        subs = subcommands(parsers[0])
        if FLAG.match(word):
            if not (all(accepts(p, word) for p in parsers) or (wrapped and accepts(wrapped, word))):
                problems.append(f"`{shown}`: {' '.join(['adm', *path])} has no option {word.split('=')[0]}")
        elif subs and len(parsers) == 1:
            if placeholder(word):
                return problems, []
            unknown = [w for w in word.split("|") if w not in subs]
            if unknown:
                problems.append(f"`{shown}`: {' '.join(['adm', *path])} has no sub-command {', '.join(unknown)}")
                return problems, []
            parsers, path = [subs[w] for w in word.split("|")], path + [word]
            if word in WRAPS:  # submit / schedule: their options, then those of the command they wrap
                wrapped = subcommands(parser())[WRAPS[word][0]]
        elif path[:1] and path[0] in WRAPS and word in WRAPS[path[0]][1]:
            wrapped = subcommands(parser())[word]
    return problems, parsers + ([wrapped] if wrapped else [])


def adm_argv(text: str) -> list[str] | None:
    """The arguments of the `adm` command a shell line or a `code` span runs (after VAR=value assignments)."""
    tokens = words(text)
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    return tokens[1:] if tokens[:1] == ["adm"] and len(tokens) > 1 else None


def cli_problems(text: str) -> list[str]:
    blocks, code = split_page(text)
    commands = [line for language, block in code if language in ("", "bash", "sh", "shell", "console")
                for line in command_lines(block)] + [span for block in blocks for span in SPAN.findall(block)]
    problems, shown = [], [parser()]  # the parsers of the commands the page shows
    for command in commands:
        argv = adm_argv(command)
        if argv is not None:
            found, parsers = check_command(argv)
            problems += found
            shown += parsers
    for block in blocks:
        for span in SPAN.findall(block):
            flag = span.split()[0]
            if span.startswith("--") and FLAG.match(flag.split("=")[0]) and not any(accepts(p, flag) for p in shown):
                problems.append(f"`{span}`: no adm command this page shows has this option ({block[:60]!r}...)")
    return problems


# --- the tests -----------------------------------------------------------------------------------------------------
def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_files_exist(page):
    text = page.read_text()
    problems = link_problems(page, text)
    tokens = re.split(r"[\s`]+", LINK.sub("]", text))
    problems += sorted({p for token in tokens if (p := path_problem(token))})
    assert not problems, f"{page_id(page)} names files that do not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_modules_exist(page):
    blocks, code = split_page(page.read_text())
    problems = [p for lang, block in code if lang == "python" for p in python_problems(block)]
    tokens = {clean(t) for block in blocks for span in SPAN.findall(block) for t in span.split()}
    problems += sorted({p for t in tokens if DOTTED.match(t) and (p := module_problem(t))})
    assert not problems, f"{page_id(page)} names modules that do not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_commands_and_flags_are_accepted(page):
    problems = cli_problems(page.read_text())
    assert not problems, f"{page_id(page)} shows what adm does not accept:\n" + "\n".join(problems)


def test_the_pages_exist_and_readme_links_each():
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {"pipeline.md", "training.md", "sampling.md", "evaluation.md", "cluster.md", "operations.md", "data.md",
            "components.md"} <= pages
    readme = (ROOT / "README.md").read_text()
    assert not [p for p in sorted(pages) if f"docs/{p}" not in readme], "README.md links every page of docs/"


def tag_names(table: str) -> set[str]:
    """The tag names of a Markdown table's first column (`a`, `b` in one cell are two)."""
    names = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("tag", "---"):
            names |= {n.strip(" `") for n in cells[0].split(",")}
    return names


def test_architecture_tag_table_is_the_one_of_tags_py():
    """pipelines/infra/tags.py is the source of the MLflow tag table; ARCHITECTURE.md shows the same tags, and every
    tag name the module defines is in it."""
    from pipelines.infra import tags

    source = tag_names(tags.__doc__)
    shown = tag_names((ROOT / "ARCHITECTURE.md").read_text().split("## The MLflow tag protocol")[1].split("\n## ")[0])
    assert shown == source, (
        f"only in ARCHITECTURE.md: {sorted(shown - source)}; only in tags.py: {sorted(source - shown)}")
    defined = {value for name, value in vars(tags).items() if name.isupper() and name != "JOB_COMMAND"  # Ray metadata
               and isinstance(value, str) and value.startswith(("adm.", "mlflow."))}
    missing = [v for v in defined if not any(n == v or n.startswith(v.rstrip(".") + ".") for n in source)]
    assert not missing, f"tags.py defines tags its table leaves out: {sorted(missing)}"
