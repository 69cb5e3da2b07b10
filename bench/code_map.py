"""The maintainer's map, counted: what makes the code base hard to change, as numbers.

Prints, for the tree it runs in (`python bench/code_map.py [--json]`):

- imports of `workers` from `services` (statements and files), and how many sit in the API process;
- import cycles among the modules of `shared/` (imports inside functions included);
- project imports inside functions;
- the longest functions (AST line spans);
- duplicated-block pairs, when the `duplicates` command is on PATH.

Why a script and not a test: these are trends to watch across changes (the counts table of a
refactor's closing note); the rules that must hold are enforced by tests/test_architecture.py.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "workers", "services")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    drop = node.level - (1 if is_package else 0)
    base = base[: len(base) - drop] if drop else base
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path) -> list[tuple[str, bool, list[str]]]:
    """(imported module, inside a function?, imported names) for every project import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool, list[str]]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] in PACKAGES:
                        found.append((alias.name, in_function, []))
            elif isinstance(child, ast.ImportFrom):
                target = resolve(module, child, is_package)
                if target.split(".")[0] in PACKAGES:
                    found.append((target, in_function, [a.name for a in child.names]))
            visit(child, inner)

    visit(tree, False)
    return found


def python_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def known_modules() -> set[str]:
    return {module_name(p) for pkg in PACKAGES for p in python_files(pkg)}


def target_module(target: str, names: list[str], modules: set[str]) -> list[str]:
    """The project modules an import loads: `from pkg import mod` names a submodule."""
    out = []
    for name in names:
        if f"{target}.{name}" in modules:
            out.append(f"{target}.{name}")
    if not out or target in modules:
        out.append(target)
    return [m for m in out if m in modules]


def shared_cycles(modules: set[str]) -> list[list[str]]:
    """Strongly connected components (size > 1) of shared/'s import graph.

    Imports inside functions count: a cycle hidden in a function body is still a cycle (it only
    moves the failure from import time to call time)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in python_files("shared"):
        src = module_name(path)
        for target, _, names in imports_of(path):
            if not target.startswith("shared"):
                continue
            for dst in target_module(target, names, modules):
                if dst != src and not src.startswith(dst + "."):  # a package's own __init__
                    graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return components


def longest_functions(top: int) -> list[tuple[int, str]]:
    spans = []
    for pkg in PACKAGES:
        for path in python_files(pkg):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    span = (node.end_lineno or node.lineno) - node.lineno + 1
                    spans.append((span, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(spans, reverse=True)[:top]


def duplicate_pairs() -> int | None:
    tool = shutil.which("duplicates")
    if tool is None:
        return None
    out = subprocess.run(
        [tool, "--repo", str(ROOT), "--seconds", "120", "--most", "1"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    first = out.strip().splitlines()[0] if out.strip() else ""
    words = first.split()
    return int(words[0]) if words and words[0].isdigit() else 0


def counts(top: int = 5) -> dict:
    modules = known_modules()
    service_imports = [
        (path, target)
        for path in python_files("services")
        for target, _, _ in imports_of(path)
        if target.startswith("workers")
    ]
    in_function = sum(
        1 for pkg in PACKAGES for path in python_files(pkg) for _, inner, _ in imports_of(path) if inner
    )
    return {
        "services_imports_of_workers": len(service_imports),
        "services_files_importing_workers": len({p for p, _ in service_imports}),
        "api_process_files_importing_workers": len(
            {p for p, _ in service_imports if "api" in p.parts or p.name == "scheduler.py"}
        ),
        "shared_cycles": shared_cycles(modules),
        "project_imports_inside_functions": in_function,
        "longest_functions": longest_functions(top),
        "duplicate_pairs": duplicate_pairs(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--top", type=int, default=5, help="how many longest functions to list")
    args = parser.parse_args()
    result = counts(args.top)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"imports of workers from services: {result['services_imports_of_workers']} "
        f"in {result['services_files_importing_workers']} files "
        f"({result['api_process_files_importing_workers']} in the API process)"
    )
    print(f"import cycles in shared/: {len(result['shared_cycles'])}")
    for cycle in result["shared_cycles"]:
        print("  " + " <-> ".join(cycle))
    print(f"project imports inside functions: {result['project_imports_inside_functions']}")
    print(f"duplicated-block pairs: {result['duplicate_pairs']}")
    print("longest functions:")
    for span, where in result["longest_functions"]:
        print(f"  {span:4d} lines  {where}")


if __name__ == "__main__":
    main()
