"""The shape of the code: the package layers, light commands that stay light, and the size of files and functions
(ARCHITECTURE.md). Fast: no services."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("components", "pipelines") for p in (ROOT / folder).rglob("*.py"))
# files follow concepts: 400 lines is a hint (`make lint` warns), 600 a wall; functions stay under 60
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 60
HEAVY = ("torch", "ray", "mlflow")


def test_imports_follow_the_layers_and_form_no_cycle():
    """import-linter's contracts of pyproject.toml: cli -> workflow | ops -> stages -> infra -> components, no Ray or
    MLflow in components, no cycle among the modules of any package (function-level imports included)."""
    lint = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    done = subprocess.run([sys.executable, "-c", lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "0 broken" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.parametrize("argv,allowed", [
    (["--help"], ()), (["presets"], ()), (["config", "--preset", "smoke"], ()), (["schedule", "--help"], ()),
    # the job client is Ray's own; nothing else heavy (the address has no cluster: the command fails fast)
    (["jobs", "list", "--address", "http://127.0.0.1:9"], ("ray",)),
])
def test_light_commands_import_no_torch_ray_or_mlflow(argv, allowed):
    code = ("import sys\nfrom pipelines.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
            f"except SystemExit:\n    pass\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = ast.literal_eval(done.stdout.strip().splitlines()[-1])  # the list printed above
    assert set(imported) <= set(allowed), f"adm {' '.join(argv)} imported {imported}"


def test_files_and_functions_stay_small():
    too_long = []
    for path in SOURCES:
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "split these by concept (at most 600 lines a file, 60 a function):\n" + "\n".join(too_long)


def test_the_config_contract_names_every_other_module_of_components():
    """components.config sits below the rest of components: its import-linter contract forbids each other module by
    name, so a new module must be added there (else config could import it unnoticed)."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c.get("source_modules") == ["components.config"]]
    modules = {f"components.{p.stem}" for p in (ROOT / "components").glob("*.py") if p.stem != "__init__"}
    assert modules <= set(contract["forbidden_modules"]), sorted(modules - set(contract["forbidden_modules"]))


# --- tests that cannot fail -------------------------------------------------------------------------------------------
def vacuous_asserts(paths) -> list[str]:
    """`assert X if C else Y` parses as `assert (X if C else Y)`: when C is false it asserts Y, a constant such as a
    non-empty list that is always true. Every assert whose test is a conditional expression, as path:line."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text(), filename=str(path))):
            if isinstance(node, ast.Assert) and isinstance(node.test, ast.IfExp):
                found.append(f"{path}:{node.lineno}")
    return found


def test_no_assert_is_a_conditional_expression():
    found = vacuous_asserts(sorted((ROOT / "tests").rglob("*.py")))
    assert not found, ("these asserts test `X if C else Y`, which asserts Y when C is false; write "
                       "`assert X == (A if C else B)` or one assert per branch:\n" + "\n".join(found))


def test_the_vacuous_assert_rule_finds_a_planted_one(tmp_path):
    planted = tmp_path / "test_planted.py"
    planted.write_text("def test_planted(calls, kind):\n"
                       "    assert calls[0] == [7] * 2 if kind == 'heun' else [999] * 2\n"  # the vacuous shape
                       "    assert calls[0] == ([7] * 2 if kind == 'heun' else [999] * 2)\n"  # fine: one comparison
                       "    assert (calls if kind else [1])\n")  # vacuous too, in brackets
    assert vacuous_asserts([planted]) == [f"{planted}:2", f"{planted}:4"]
