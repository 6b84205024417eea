"""The project's own modules import each other without a cycle, and only downwards: the library never
imports an entry script, the web page or scripts/ (read from the source with ast)."""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = {"tests", "results", "data", "shared"}
LIBRARY = ("autoregressive", "tokenizer", "dataset", "evaluations")  # the packages; above them: scripts, app, demo


def project_modules() -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project outside tests and hidden folders."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if any(part.startswith(".") or part in SKIPPED for part in parts[:-1]):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules[".".join(parts)] = path
    return modules


def imported_names(path: Path, module: str, is_package: bool) -> Set[str]:
    """Every name an import statement of the file may refer to, anywhere in it (function bodies too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")[: len(module.split(".")) - (node.level - is_package)]
                base = ".".join(package + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> Dict[str, Set[str]]:
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(path, module, path.name == "__init__.py"):
            while name and name not in modules:  # `from a.b import f` -> a.b
                name = name.rpartition(".")[0]
            # importing a package's submodule runs the package's __init__ first, not the other way round
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle as [a, b, ..., a], or [] (depth-first search with colours)."""
    colour = {module: "white" for module in graph}
    stack: List[str] = []

    def visit(module: str) -> List[str]:
        colour[module] = "grey"
        stack.append(module)
        for target in sorted(graph[module]):
            if colour[target] == "grey":
                return stack[stack.index(target):] + [target]
            if colour[target] == "white":
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        colour[module] = "black"
        return []

    for module in sorted(graph):
        if colour[module] == "white":
            cycle = visit(module)
            if cycle:
                return cycle
    return []


def test_the_graph_sees_the_training_imports():
    graph = import_graph()
    assert "autoregressive.train.checkpoint" in graph["autoregressive.train.loop"]
    assert "autoregressive.train.config" in graph["autoregressive.train.checkpoint"]


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_project_modules():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def layering_violations(graph: Dict[str, Set[str]]) -> List[str]:
    """'a -> b' for every library module a that imports a module b outside the library packages."""
    in_library = lambda module: module.split(".")[0] in LIBRARY
    return sorted(f"{module} -> {target}" for module, targets in graph.items() if in_library(module)
                  for target in targets if not in_library(target))


def test_layering_violations_reports_an_upward_import():
    graph = {"dataset.edges": {"extract_codes_c2i", "dataset.transforms"}, "scripts.sweep_cfg": {"autoregressive"}}
    assert layering_violations(graph) == ["dataset.edges -> extract_codes_c2i"]


def test_the_library_never_imports_entry_scripts_the_web_page_or_scripts():
    graph = import_graph()
    assert "dataset.images" in graph["dataset.edges"]  # the graph sees imports inside functions
    assert not layering_violations(graph), "imports going up: " + ", ".join(layering_violations(graph))


def test_pip_install_makes_every_library_package_importable():
    """pyproject.toml's package list is the library: `pip install -e .` must install each of its packages."""
    import re

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    included = re.search(r"^include = \[(.*)\]$", text, re.MULTILINE).group(1)
    assert sorted(name.strip(' "*') for name in included.split(",")) == sorted(LIBRARY)


def test_the_model_and_tokenizer_import_only_torch_and_numpy():
    """With every other third-party package made unimportable once torch and numpy are loaded, the model,
    its kernels and the tokenizer still import and build (Triton stays optional), and
    importing them does not load torch's compiler (seconds at every start of a script)."""
    code = """
import importlib.abc, sys
import numpy, torch
allowed = set(sys.stdlib_module_names) | {"torch", "numpy", "autoregressive", "tokenizer"}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] not in allowed:
            raise ImportError(f"refused: {name}")
sys.meta_path.insert(0, Refuse())
from autoregressive.models.arpg import ARPG_models
from tokenizer.vq_model import VQ_models
ARPG_models["ARPG-tiny"](), VQ_models["VQ-16"]()
print("ok" if "torch._dynamo" not in sys.modules else "torch._dynamo imported")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
