"""The benchmark and study code lives in the package: nothing under dit_sparse/ (its kernels/ and
pipelines/ included) or scripts/ edits sys.path or imports from tests/ or scripts/, and every
family has a tiny pipeline there; tests import the package, never a script."""

import ast
from pathlib import Path

import pytest

from dit_sparse.bench.tiny_pipelines import tiny_pipeline
from dit_sparse.families import FAMILIES, find_family

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("dit_sparse", "kernels", "pipelines", "scripts") for p in (ROOT / folder).rglob("*.py"))
TEST_AND_SCRIPT_MODULES = {"tests", "scripts", "conftest", "family_checks"} | {p.stem for p in (ROOT / "scripts").glob("*.py")}


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of every absolute import, and of every importlib.import_module("...")."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args
              and isinstance(node.args[0], (ast.Constant, ast.JoinedStr))):
            first = node.args[0] if isinstance(node.args[0], ast.Constant) else node.args[0].values[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value.split(".")[0])
    return names


def touches_sys_path(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"
               for node in ast.walk(tree))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sys_path_edits_and_no_imports_from_tests_or_scripts(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert not touches_sys_path(tree), f"{path.relative_to(ROOT)} uses sys.path"
    names = {n for n in imported_modules(tree) if n in TEST_AND_SCRIPT_MODULES or n.startswith("test_")}
    assert not names, f"{path.relative_to(ROOT)} imports {sorted(names)} from tests/ or scripts/"


def test_the_checks_see_what_they_look_for():
    assert touches_sys_path(ast.parse("import sys\nsys.path.insert(0, 'scripts')"))
    assert imported_modules(ast.parse("import bench_e2e as e2e\nfrom tests import x\n"
                                      "importlib.import_module(f'test_family_{name}')")) == {"bench_e2e", "tests", "test_family_"}
    assert "bench_e2e" in TEST_AND_SCRIPT_MODULES and any(p.parts[-2] == "scripts" for p in SOURCES)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_has_a_tiny_pipeline(family):
    module = tiny_pipeline(family.name)
    assert find_family(module.build().transformer) is family and module.call_kwargs()["output_type"] == "latent"


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("*.py")), ids=lambda p: p.name)
def test_tests_import_the_package_not_the_scripts(path):
    """Tests test the library: the scripts are thin entry points, never imported."""
    tree = ast.parse(path.read_text(), filename=str(path))
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    assert not touches_sys_path(tree), f"tests/{path.name} uses sys.path"
    assert not imported_modules(tree) & scripts, f"tests/{path.name} imports a script"
