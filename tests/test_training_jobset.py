"""The train stage handed to a JobSet (``SPAR_TRAIN_LAUNCHER=jobset``), against a fake API server.

No cluster: a small HTTP server in this process answers the calls ``workers.training.jobset`` makes
(JobSets of jobset.x-k8s.io/v1alpha2, pods, pod logs) and plays the JobSet controller and node 0: on
a poll after creation it publishes the version on the "shared volume" (the run directory) and marks
the JobSet Completed, or marks it Failed with failed pods. The template is the one
``deploy/overlays/gpu-multinode`` renders, so the tests see what a cluster would hold.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kustomize_render import build
from run_fixtures import new_run, shaped_model

from shared.errors import TrainingLaunchError
from shared.runtime.artifacts import RunPaths
from shared.runtime.shards import StageSpec
from shared.runtime.versions import METADATA, publishing, version_dir, write_metadata
from workers.stages import train as train_stage
from workers.stages.common import StageContext
from workers.training import jobset as jobset_mod
from workers.training.jobset import JobSetLauncher, jobset_name

ROOT = Path(__file__).resolve().parents[1]
NS = "spar"
JOBSETS = f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/{NS}/jobsets"
PODS = f"/api/v1/namespaces/{NS}/pods"
PAIRS = [{"prompt": f"p{i}", "chosen": "yes", "rejected": "no"} for i in range(3)]

pytestmark = pytest.mark.timeout(60)


def template() -> dict[str, Any]:
    """The suspended template JobSet as the gpu-multinode overlay applies it."""
    docs = build(ROOT / "deploy" / "overlays" / "gpu-multinode")
    (doc,) = [d for d in docs if d["kind"] == "JobSet"]
    return doc


class FakeCluster:
    """The API server's state and the requests it saw; ``on_poll`` plays controller and nodes."""

    def __init__(self) -> None:
        self.jobsets: dict[str, dict[str, Any]] = {"train-multinode": template()}
        self.pods: list[dict[str, Any]] = []
        self.logs: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.polls: dict[str, int] = {}
        self.last_created: dict[str, Any] = {}
        self.on_poll: Callable[[dict[str, Any], int], None] = lambda jobset, n: None
        self.lock = threading.Lock()

    def created(self) -> list[dict[str, Any]]:
        return [j for name, j in self.jobsets.items() if name != "train-multinode"]


def handler_for(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def reply(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def status(self, code: int, message: str) -> None:
            self.reply(code, {"kind": "Status", "code": code, "message": message})

        def body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length)) if length else None

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            with cluster.lock:
                cluster.requests.append(("GET", url.path))
                if url.path.startswith(JOBSETS + "/"):
                    name = url.path.rsplit("/", 1)[1]
                    jobset = cluster.jobsets.get(name)
                    if jobset is None:
                        return self.status(404, f'jobsets.jobset.x-k8s.io "{name}" not found')
                    if name != "train-multinode":
                        cluster.polls[name] = cluster.polls.get(name, 0) + 1
                        cluster.on_poll(jobset, cluster.polls[name])
                    return self.reply(200, jobset)
                if url.path == PODS:
                    selector = parse_qs(url.query)["labelSelector"][0]
                    key, value = selector.split("=")
                    items = [p for p in cluster.pods if p["metadata"]["labels"].get(key) == value]
                    return self.reply(200, {"kind": "PodList", "items": items})
                if url.path.startswith(PODS + "/") and url.path.endswith("/log"):
                    pod = url.path.split("/")[-2]
                    return self.reply(200, cluster.logs.get(pod, ""), "text/plain")
            self.status(404, "unknown path")

        def do_POST(self) -> None:  # noqa: N802
            body = self.body()
            with cluster.lock:
                cluster.requests.append(("POST", self.path))
                name = body["metadata"]["name"]
                if name in cluster.jobsets:
                    return self.status(409, f'jobsets.jobset.x-k8s.io "{name}" already exists')
                cluster.jobsets[name] = body | {"status": {}}
                cluster.last_created = body
            self.reply(201, body)

        def do_DELETE(self) -> None:  # noqa: N802
            self.body()
            with cluster.lock:
                cluster.requests.append(("DELETE", self.path))
                name = self.path.rsplit("/", 1)[1]
                if cluster.jobsets.pop(name, None) is None:
                    return self.status(404, "not found")
            self.reply(200, {"kind": "Status", "status": "Success"})

    return Handler


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    """A fake API server, and the worker's environment pointing at it with the JobSet launcher."""
    state = FakeCluster()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SPAR_TRAIN_LAUNCHER", "jobset")
    monkeypatch.setenv("SPAR_KUBE_API", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("SPAR_TRAIN_NAMESPACE", NS)
    monkeypatch.setenv("SPAR_TRAIN_JOBSET_POLL_S", "0.01")
    for key in ("SPAR_NUM_MACHINES", "SPAR_TRAIN_NODES", "SPAR_TRAIN_IMAGE"):
        monkeypatch.delenv(key, raising=False)
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunPaths:
    """A run ready for iteration 0's train_actor stage (2 processes: one per node of the template)."""
    model = str(shaped_model(tmp_path / "model"))
    settings = {"seed": 1, "train_actor": {"objective": "dpo", "num_processes": 2}}
    paths = new_run(tmp_path, "js", ["x"], model=model, runs=tmp_path / "runs", run_id="js", **settings)
    data = paths.data_file(0, "pairs.jsonl")
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))

    def no_local_training(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the worker trained locally although the JobSet launcher is set")

    monkeypatch.setattr("workers.training.actor.train_actor", no_local_training)
    return paths


def publish_as_node0(paths: RunPaths) -> None:
    """What node 0's train stage leaves on the shared volume: version v1 with its metrics."""
    with publishing(version_dir(paths, "actor", 1)) as tmp:
        write_metadata(
            tmp,
            {
                "role": "actor",
                "version": "v1",
                "parent": "v0",
                "objective": "dpo",
                "data": {"file": "pairs.jsonl", "sha256": "0" * 64, "records": len(PAIRS)},
                "hyperparameters": {},
                "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "metrics": {"loss_curve": [0.7, 0.5], "steps": 2},
            },
        )


def completes(paths: RunPaths, after: int = 2) -> Callable[[dict[str, Any], int], None]:
    """A controller whose nodes run a few polls, report steps, then node 0 publishes."""

    def on_poll(jobset: dict[str, Any], n: int) -> None:
        progress = paths.root / "checkpoints" / "actor-v1" / "progress.json"
        if n == 1:
            jobset_mod.write_progress(progress, 1, 2)
        if n == after:
            publish_as_node0(paths)
            jobset["status"] = {"conditions": [{"type": "Completed", "status": "True"}]}

    return on_poll


def stage(paths: RunPaths, steps: list[tuple[str, int, int]] | None = None) -> Any:
    spec = StageSpec(run_dir=str(paths.root), iteration=0, stage="train_actor", shard=0)
    sink = None if steps is None else (lambda label, done, total: steps.append((label, done, total)))
    return train_stage.run_train_actor(StageContext.open(paths, spec, NoEngines(), sink))


class NoEngines:
    def __init__(self) -> None:
        self.released = 0

    def release(self) -> None:
        self.released += 1


def count_publishing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every version folder the worker's train stage opens for publishing."""
    opened: list[Path] = []
    real = train_stage.publishing

    def counting(target: Path):  # type: ignore[no-untyped-def]
        opened.append(target)
        return real(target)

    monkeypatch.setattr(train_stage, "publishing", counting)
    return opened


# ------------------------------------------------------------------------------------------------ tests


def test_default_launcher_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPAR_TRAIN_LAUNCHER", raising=False)
    assert JobSetLauncher.from_env({}) is None
    assert JobSetLauncher.from_env({"SPAR_TRAIN_LAUNCHER": "local"}) is None
    assert JobSetLauncher.from_env({"SPAR_TRAIN_LAUNCHER": "jobset", "SPAR_TRAIN_NAMESPACE": "x"}) == (
        JobSetLauncher(namespace="x")
    )
    with pytest.raises(TrainingLaunchError, match="SPAR_TRAIN_LAUNCHER='k8s'"):
        JobSetLauncher.from_env({"SPAR_TRAIN_LAUNCHER": "k8s"})


def test_default_launcher_trains_in_the_worker(run: RunPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SPAR_TRAIN_LAUNCHER the stage trains in this process and never calls an API."""
    monkeypatch.delenv("SPAR_TRAIN_LAUNCHER", raising=False)
    monkeypatch.setenv("SPAR_KUBE_API", "http://127.0.0.1:9")  # would fail loudly if called
    calls: list[str] = []
    monkeypatch.setattr(
        train_stage, "train_version", lambda kind, *a: calls.append(kind) or {"loss_curve": [1.0]}
    )
    opened = count_publishing(monkeypatch)
    result = stage(run)
    assert calls == ["preference"] and opened == [version_dir(run, "actor", 1)]
    assert result.models["actor_new"].startswith("v1")


def test_created_jobset_spec_and_success_publishes_once(
    cluster: FakeCluster, run: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.on_poll = completes(run)
    opened = count_publishing(monkeypatch)
    steps: list[tuple[str, int, int]] = []
    result = stage(run, steps)

    name = jobset_name(str(run.root), 0, "train_actor")
    assert name.startswith("spar-actor-i0-") and len(f"{name}-node-0-0") <= 63
    created = [r for r in cluster.requests if r[0] == "POST"]
    assert created == [("POST", JOBSETS)]
    body = cluster.last_created
    assert body["metadata"]["name"] == name and body["spec"]["suspend"] is False
    (replicated,) = body["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert replicated["replicas"] == 1 and job["parallelism"] == job["completions"] == 2
    (container,) = job["template"]["spec"]["containers"]
    assert container["image"] == "spar:train"
    assert container["command"] == ["python", "-m", "workers.training.node"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SPAR_RUN_DIR"]["value"] == str(run.root)
    assert env["SPAR_ITERATION"]["value"] == "0" and env["SPAR_STAGE"]["value"] == "train_actor"
    assert env["SPAR_NUM_MACHINES"]["value"] == "2" and env["SPAR_TRAIN_LAUNCHER"]["value"] == "local"
    assert env["SPAR_MAIN_PROCESS_IP"]["value"] == f"{name}-node-0-0.spar-train-nodes"
    assert "fieldRef" in env["SPAR_MACHINE_RANK"]["valueFrom"]  # the completion index, kept
    assert [e["name"] for e in container["env"]].count("SPAR_RUN_DIR") == 1

    # the worker published nothing itself; node 0's version is the stage's result, read once
    assert opened == []
    meta = json.loads((version_dir(run, "actor", 1) / METADATA).read_text())
    assert meta["metrics"]["steps"] == 2
    assert set(result.models) == {"actor", "actor_new"} and result.models["actor"].startswith("v0")
    assert result.models["actor_new"].startswith("v1") and result.counts["trained"] == 1
    assert result.metrics["loss_curve"] == [0.7, 0.5]
    assert (label := steps[0][0]).startswith("training on Kubernetes") and name in label
    assert (1, 2) in [(d, t) for _, d, t in steps]  # node 0's step count reached the worker
    assert name not in cluster.jobsets and ("DELETE", f"{JOBSETS}/{name}") in cluster.requests
    assert not (run.root / "checkpoints" / "actor-v1").exists()

    # a retry after success finds the version: no API call at all
    seen = len(cluster.requests)
    again = stage(run)
    assert len(cluster.requests) == seen and again.models["actor_new"] == result.models["actor_new"]


def test_retry_adopts_the_running_jobset(
    cluster: FakeCluster, run: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that died while waiting: its retry waits for the same JobSet, creating none."""
    name = jobset_name(str(run.root), 0, "train_actor")
    launcher = JobSetLauncher.from_env()
    assert launcher is not None
    env = {"SPAR_RUN_DIR": str(run.root), "SPAR_ITERATION": "0", "SPAR_STAGE": "train_actor"}
    cluster.jobsets[name] = jobset_mod.build_jobset(template(), name, env, None, None) | {"status": {}}
    cluster.on_poll = completes(run, after=3)
    opened = count_publishing(monkeypatch)
    result = stage(run)
    assert [r for r in cluster.requests if r[0] == "POST"] == []
    assert opened == [] and result.models["actor_new"].startswith("v1")


def test_failure_surfaces_the_first_failed_pods_error_and_keeps_the_jobset(
    cluster: FakeCluster, run: RunPaths
) -> None:
    def fails(jobset: dict[str, Any], n: int) -> None:
        name = jobset["metadata"]["name"]
        jobset["status"] = {
            "conditions": [
                {"type": "Failed", "status": "True", "reason": "FailurePolicy", "message": "restarts 3"}
            ]
        }
        cluster.pods[:] = [
            pod(name, 0, "2025-01-01T00:00:09Z", "RuntimeError: gloo connection closed by peer"),
            pod(name, 1, "2025-01-01T00:00:05Z", ""),  # first to fail: its message comes from its log
        ]
        cluster.logs[f"{name}-node-0-1-abcde"] = "step 3\ntorch.OutOfMemoryError: CUDA out of memory\n"

    cluster.on_poll = fails
    with pytest.raises(TrainingLaunchError) as info:
        stage(run)
    message = str(info.value)
    assert "FailurePolicy: restarts 3" in message
    assert "node 1" in message and "torch.OutOfMemoryError: CUDA out of memory" in message
    assert "gloo" not in message  # node 0 only followed node 1 down
    name = jobset_name(str(run.root), 0, "train_actor")
    assert name in cluster.jobsets  # kept for kubectl describe/logs
    assert not version_dir(run, "actor", 1).exists()

    # the retry deletes the failed JobSet and creates a fresh one, which completes
    cluster.pods.clear()
    cluster.polls.clear()
    cluster.on_poll = completes(run)
    result = stage(run)
    posts = [r for r in cluster.requests if r[0] == "POST"]
    assert len(posts) == 2 and result.models["actor_new"].startswith("v1")


def test_num_processes_that_do_not_divide_over_the_nodes_are_refused(
    cluster: FakeCluster, run: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAR_TRAIN_NODES", "3")
    with pytest.raises(TrainingLaunchError, match="num_processes=2 does not divide over 3 nodes"):
        stage(run)
    assert cluster.created() == []


def pod(jobset: str, index: int, finished: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{jobset}-node-0-{index}-abcde",
            "labels": {"jobset.sigs.k8s.io/jobset-name": jobset},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "node",
                    "state": {"terminated": {"exitCode": 1, "finishedAt": finished, "message": message}},
                }
            ],
        },
    }
