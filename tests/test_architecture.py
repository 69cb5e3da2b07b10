"""The import rules of docs/architecture.md, enforced.

Static rules read every module's imports with the AST (imports inside functions count: a lazy
import is still a dependency); the API-process rule imports the API and the scheduler in a fresh
interpreter and looks at what got loaded, which is what a maintainer really cares about (the API
must not build engines or pull torch in).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from code_map import imports_of, known_modules, module_name, python_files, shared_cycles  # noqa: E402

ENGINE_LIBS = {"vllm", "transformers", "trl", "peft", "deepspeed", "accelerate"}
SERVICE_LIBS = {"fastapi", "starlette", "uvicorn", "httpx", "h11"}
QUEUE_LIBS = {"redis", "rq"}

SERVICES_MAY_IMPORT_WORKERS: dict[str, str] = {
    "services/cli.py": "the composition root: `spar worker`, `spar run` and the tiny model start here",
    "services/local.py": "the in-process executor runs stages itself (spar run, no Redis)",
    "services/eval_cli.py": "`spar eval` loads an engine to generate",
    "services/preflight.py": "`spar run` resolves (and prepares) its models before a run directory exists",
    "services/estimate.py": "`spar run --dry-run` times the configured engines to estimate a run's cost",
}
"""The only modules under services/ that may import workers, and why (none is in the API process)."""


def third_party(path: Path) -> list[tuple[str, bool]]:
    """(top-level third-party package, imported inside a function?) for every import of a file."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, inner: bool) -> None:
        for child in ast.iter_child_nodes(node):
            in_fn = inner or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name.split(".")[0], inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                found.append((child.module.split(".")[0], inner))
            visit(child, in_fn)

    visit(tree, False)
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def core_modules() -> list[Path]:
    return [p for p in python_files("shared") if "runtime" not in p.relative_to(ROOT / "shared").parts]


def runtime_modules() -> list[Path]:
    return python_files("shared/runtime")


def test_the_core_imports_nothing_above_it() -> None:
    """shared/ (the algorithm) knows no run store, queue, worker, service, engine or HTTP library."""
    bad = [
        f"{rel(p)} imports {target}"
        for p in core_modules()
        for target, _, _ in imports_of(p)
        if target.split(".")[0] in {"workers", "services"} or target.startswith("shared.runtime")
    ]
    bad += [
        f"{rel(p)} imports {lib}"
        for p in core_modules()
        for lib, _ in third_party(p)
        if lib in ENGINE_LIBS | SERVICE_LIBS | QUEUE_LIBS
    ]
    assert not bad, "\n".join(bad)


def test_the_runtime_serves_both_sides_and_builds_nothing() -> None:
    """shared/runtime (run store, queue contract, settings, manifests) imports no worker, service,
    engine or HTTP code; torch only inside a function (the TensorBoard writer of tracked runs)."""
    bad = [
        f"{rel(p)} imports {target}"
        for p in runtime_modules()
        for target, _, _ in imports_of(p)
        if target.split(".")[0] in {"workers", "services"}
    ]
    bad += [
        f"{rel(p)} imports {lib}"
        for p in runtime_modules()
        for lib, inner in third_party(p)
        if lib in ENGINE_LIBS | SERVICE_LIBS or (lib == "torch" and not inner)
    ]
    assert not bad, "\n".join(bad)


def test_workers_never_import_services() -> None:
    bad = [
        f"{rel(p)} imports {target}"
        for p in python_files("workers")
        for target, _, _ in imports_of(p)
        if target.split(".")[0] == "services"
    ]
    assert not bad, "\n".join(bad)


def test_services_import_workers_only_where_allowed() -> None:
    bad = [
        f"{rel(p)} imports {target} (only {', '.join(SERVICES_MAY_IMPORT_WORKERS)} may)"
        for p in python_files("services")
        for target, _, _ in imports_of(p)
        if target.split(".")[0] == "workers" and rel(p) not in SERVICES_MAY_IMPORT_WORKERS
    ]
    assert not bad, "\n".join(bad)


def test_the_allow_list_names_real_importers() -> None:
    """An entry nobody needs any more must go, or the list stops meaning anything."""
    for name in SERVICES_MAY_IMPORT_WORKERS:
        path = ROOT / name
        assert path.exists(), f"{name} is allowed to import workers but does not exist"
        imported = [t for t, _, _ in imports_of(path)]
        assert any(t.startswith("workers") for t in imported), f"{name} no longer imports workers"


def test_no_import_cycles_in_shared() -> None:
    assert shared_cycles(known_modules()) == []


def test_the_api_process_loads_no_worker_engine_or_training_code() -> None:
    """What really runs: import the API app and the scheduler in a fresh interpreter."""
    probe = (
        "import json, sys\n"
        "import services.api.main, services.scheduler, services.api.views\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'workers', 'torch', 'vllm', 'transformers', 'trl', 'peft', 'deepspeed'})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the API process loaded: {loaded}"


@pytest.mark.parametrize("package", ["shared", "workers", "services"])
def test_every_module_is_counted(package: str) -> None:
    """The static rules see every module (a file the walker missed would escape them)."""
    names = {module_name(p) for p in python_files(package)}
    assert all(n.split(".")[0] == package for n in names) and len(names) > 3
