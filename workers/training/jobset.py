"""The train stage handed to Kubernetes: one JobSet per (run, iteration, stage) across N GPU nodes.

With ``SPAR_TRAIN_LAUNCHER=jobset`` (a setting of the train worker; ``local``, the default, trains in
the worker as before) the worker copies the suspended template JobSet of
``deploy/overlays/gpu-multinode`` (``SPAR_TRAIN_JOBSET_TEMPLATE``, default ``train-multinode``) into a
JobSet of its own for the stage, with the stage's environment, and waits for it. Each pod runs
``python -m workers.training.node``: node 0 publishes the version on the shared volume, and the
worker, once the JobSet has completed, reads that version and reports the stage (it never writes the
version itself, so it is published exactly once).

- **Name**: ``spar-<role>-i<iteration>-<hash of run dir, iteration, stage>``: a retried stage finds
  the JobSet of its first attempt and waits for it instead of starting a second one.
- **Policy**: a completed JobSet is deleted (its result is the published version); a failed one is
  kept for ``kubectl describe/logs`` until the stage is retried, when it is deleted and created anew
  (the new nodes resume from the step checkpoint). A worker that dies while waiting leaves its
  JobSet running; the retry adopts it.
- **Errors**: a failed JobSet fails the stage with the message of the pod that failed first (its
  termination message, else its log's error lines), since the other nodes' collectives fail after it.

The API server is spoken to with httpx (already a dependency) and the pod's service-account token;
JobSet is a custom resource, so the official client would hand back the same plain dicts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.errors import TrainingLaunchError

from .launch import error_summary

LAUNCHERS = ("local", "jobset")
GROUP = "jobset.x-k8s.io"
VERSION = "v1alpha2"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
LOG_LINES = 200
STAGE_ENV = ("SPAR_RUN_DIR", "SPAR_ITERATION", "SPAR_STAGE", "SPAR_NUM_MACHINES", "SPAR_MAIN_PROCESS_IP")

log = logging.getLogger("spar.train.jobset")


class KubeApiError(RuntimeError):
    """The API server answered with an error status (``status`` is its HTTP code)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class JobSetLauncher:
    """The train worker's JobSet settings, from its environment (see :meth:`from_env`)."""

    namespace: str
    template: str = "train-multinode"
    nodes: int | None = None
    image: str | None = None
    poll_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobSetLauncher | None:
        """The launcher, or None for ``SPAR_TRAIN_LAUNCHER=local`` (the default: train in the worker)."""
        env = os.environ if env is None else env
        kind = (env.get("SPAR_TRAIN_LAUNCHER") or "local").strip().lower()
        if kind not in LAUNCHERS:
            raise TrainingLaunchError(f"SPAR_TRAIN_LAUNCHER={kind!r}: one of {LAUNCHERS}")
        if kind == "local":
            return None
        namespace = env.get("SPAR_TRAIN_NAMESPACE") or _read(SA_DIR / "namespace") or "spar"
        nodes = env.get("SPAR_TRAIN_NODES")
        if nodes is not None and int(nodes) < 1:
            raise TrainingLaunchError(f"SPAR_TRAIN_NODES={nodes}: at least 1")
        return cls(
            namespace=namespace.strip(),
            template=env.get("SPAR_TRAIN_JOBSET_TEMPLATE") or cls.template,
            nodes=int(nodes) if nodes else None,
            image=env.get("SPAR_TRAIN_IMAGE") or None,
            poll_s=float(env.get("SPAR_TRAIN_JOBSET_POLL_S") or cls.poll_s),
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


class KubeApi:
    """The few calls the launcher makes, over HTTPS with the pod's service-account token.

    ``SPAR_KUBE_API`` replaces the in-cluster address (e.g. ``http://127.0.0.1:8001`` behind
    ``kubectl proxy``, or a test's fake server). The token is re-read per request: projected
    service-account tokens are rotated while the worker runs.
    """

    def __init__(self, base_url: str, token_file: Path | None = None, ca_file: Path | None = None) -> None:
        self.token_file = token_file
        verify: Any = str(ca_file) if ca_file is not None and ca_file.exists() else True
        self.client = httpx.Client(base_url=base_url, verify=verify, timeout=30.0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KubeApi:
        env = os.environ if env is None else env
        url = env.get("SPAR_KUBE_API")
        if not url:
            host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise TrainingLaunchError(
                    "SPAR_TRAIN_LAUNCHER=jobset needs the Kubernetes API: run the worker in a pod "
                    "(KUBERNETES_SERVICE_HOST) or set SPAR_KUBE_API"
                )
            url = f"https://{host}:{port}"
        return cls(url, SA_DIR / "token", SA_DIR / "ca.crt")

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """JSON of a 2xx answer; :class:`KubeApiError` with the server's message otherwise."""
        headers = {"Accept": "application/json"}
        token = _read(self.token_file) if self.token_file is not None else None
        if token:
            headers["Authorization"] = f"Bearer {token.strip()}"
        response = self.client.request(method, path, json=body, params=params or None, headers=headers)
        if response.status_code >= 400:
            try:
                message = response.json().get("message", response.text)
            except ValueError:
                message = response.text
            raise KubeApiError(response.status_code, f"{method} {path}: {message}")
        if "json" not in response.headers.get("content-type", ""):
            return response.text
        return response.json()

    def jobsets(self, namespace: str, name: str = "") -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/jobsets" + (f"/{name}" if name else "")

    def get_jobset(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", self.jobsets(namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        return str(self.request("GET", path, container=container, tailLines=LOG_LINES))


def jobset_name(run_dir: str, iteration: int, stage: str) -> str:
    """The stage's JobSet name: the same for every attempt of the stage, short enough for pod names.

    Pod hostnames are ``<jobset>-<replicated job>-<job index>-<pod index>`` and must fit in 63
    characters, so the run directory enters as a hash.
    """
    key = f"{Path(run_dir).resolve()}|{iteration}|{stage}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"spar-{stage.removeprefix('train_')}-i{iteration}-{digest}"


def build_jobset(
    template: dict[str, Any],
    name: str,
    env: dict[str, str],
    nodes: int | None,
    image: str | None,
) -> dict[str, Any]:
    """The stage's JobSet: the template's spec, running, with ``nodes`` pods and the stage's env."""
    spec = copy.deepcopy(template["spec"])
    spec["suspend"] = False
    (replicated,) = spec["replicatedJobs"]  # the overlay's single "node" replicated job
    job = replicated["template"]["spec"]
    count = nodes or int(job.get("completions") or 1)
    replicated["replicas"] = 1
    job["parallelism"] = job["completions"] = count
    subdomain = spec.get("network", {}).get("subdomain")
    if not subdomain:
        raise TrainingLaunchError(f"JobSet template {template['metadata']['name']} has no network.subdomain")
    stage_env = env | {
        "SPAR_NUM_MACHINES": str(count),
        "SPAR_MAIN_PROCESS_IP": f"{name}-{replicated['name']}-0-0.{subdomain}",
        "SPAR_TRAIN_LAUNCHER": "local",  # the nodes train; they never hand the stage on again
    }
    pod = job["template"]["spec"]
    for container in pod["containers"]:
        if image:
            container["image"] = image
        container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
        kept = [e for e in container.get("env", []) if e["name"] not in stage_env]
        container["env"] = kept + [{"name": k, "value": v} for k, v in stage_env.items()]
    meta = template.get("metadata", {})
    return {
        "apiVersion": template.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": "JobSet",
        "metadata": {
            "name": name,
            "labels": dict(meta.get("labels") or {}) | {"spar.dev/stage": env["SPAR_STAGE"]},
            "annotations": {
                "spar.dev/run-dir": env["SPAR_RUN_DIR"],
                "spar.dev/iteration": env["SPAR_ITERATION"],
            },
        },
        "spec": spec,
    }


def terminal(jobset: dict[str, Any]) -> str | None:
    """``Completed`` or ``Failed`` once the JobSet controller says so, else None."""
    for condition in jobset.get("status", {}).get("conditions") or []:
        if condition.get("type") in ("Completed", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def failure_message(api: KubeApi, namespace: str, jobset: dict[str, Any]) -> str:
    """The JobSet's Failed condition and the message of the pod that failed first."""
    name = jobset["metadata"]["name"]
    cond = next(
        (c for c in jobset.get("status", {}).get("conditions") or [] if c.get("type") == "Failed"), {}
    )
    head = f"JobSet {namespace}/{name} failed ({cond.get('reason', '?')}: {cond.get('message', '')})"
    try:
        pods = api.pods(namespace, f"{JOBSET_LABEL}={name}")
    except KubeApiError as exc:
        return f"{head}; its pods could not be read: {exc}"
    failed = []
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            term = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get(
                "terminated"
            )
            if term and term.get("exitCode", 0) != 0:
                failed.append((term.get("finishedAt") or "", pod, status["name"], term))
    if not failed:
        return f"{head}; no failed pod found"
    failed.sort(key=lambda item: item[0])
    _, pod, container, term = failed[0]
    pod_name = pod["metadata"]["name"]
    node = pod["metadata"].get("annotations", {}).get(INDEX_ANNOTATION, "?")
    text = term.get("message") or ""
    if not text.strip():
        try:
            text = api.pod_log(namespace, pod_name, container)
        except KubeApiError as exc:
            text = f"(no termination message; log unreadable: {exc})"
    lines = [line for line in text.splitlines() if line.strip()]
    where = f"pod {pod_name} (node {node}) exited with code {term.get('exitCode')}"
    return f"{head}; {where}:\n{error_summary(lines)}"


def read_progress(path: Path) -> tuple[int, int]:
    """Node 0's last (done, total) steps, (0, 0) before its first step."""
    try:
        step = json.loads(_read(path) or "{}")
        return int(step["done"]), int(step["total"])
    except (ValueError, KeyError, TypeError):
        return 0, 0


def write_progress(path: Path, done: int, total: int) -> None:
    """Node 0's step count for the waiting worker (replaced atomically: never read half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({"done": done, "total": total}), encoding="utf-8")
    tmp.replace(path)


def _wait_deleted(api: KubeApi, namespace: str, name: str, poll_s: float, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while api.get_jobset(namespace, name) is not None:
        if time.monotonic() > deadline:
            raise TrainingLaunchError(f"JobSet {namespace}/{name} still exists {limit_s:.0f} s after delete")
        time.sleep(poll_s)


def run_stage(
    launcher: JobSetLauncher,
    api: KubeApi,
    env: dict[str, str],
    num_processes: int,
    progress_file: Path,
    on_progress: Callable[[str, int, int], None] | None,
) -> str:
    """Create (or adopt) the stage's JobSet, wait for it to complete, delete it; return its name.

    ``env`` holds ``SPAR_RUN_DIR``, ``SPAR_ITERATION`` and ``SPAR_STAGE``. ``progress_file`` is where
    node 0 writes its step count (``SPAR_PROGRESS_FILE``); it is read at each poll for ``on_progress``.
    A failed JobSet raises :class:`TrainingLaunchError` with the failing pod's message.
    """
    ns = launcher.namespace
    name = jobset_name(env["SPAR_RUN_DIR"], int(env["SPAR_ITERATION"]), env["SPAR_STAGE"])
    env = env | {"SPAR_PROGRESS_FILE": str(progress_file)}
    existing = api.get_jobset(ns, name)
    if existing is not None:
        if existing["metadata"].get("annotations", {}).get("spar.dev/run-dir") != env["SPAR_RUN_DIR"]:
            raise TrainingLaunchError(f"JobSet {ns}/{name} exists but belongs to another run: delete it")
        if terminal(existing) == "Failed":  # kept for inspection until this retry: start afresh
            log.info("deleting failed JobSet", extra={"event": "train.jobset.retry", "jobset": name})
            api.request("DELETE", api.jobsets(ns, name), {"propagationPolicy": "Foreground"})
            _wait_deleted(api, ns, name, launcher.poll_s)
            existing = None
    if existing is None:
        template = api.get_jobset(ns, launcher.template)
        if template is None:
            raise TrainingLaunchError(
                f"JobSet template {ns}/{launcher.template} not found (apply deploy/overlays/gpu-multinode "
                "or set SPAR_TRAIN_JOBSET_TEMPLATE)"
            )
        body = build_jobset(template, name, env, launcher.nodes, launcher.image)
        nodes = int(body["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"])
        if num_processes % nodes:  # refused here, before any pod starts, as each node would refuse it
            raise TrainingLaunchError(
                f"num_processes={num_processes} does not divide over {nodes} nodes (the JobSet's "
                "completions or SPAR_TRAIN_NODES): set num_processes to nodes x GPUs per node"
            )
        progress_file.unlink(missing_ok=True)
        try:
            api.request("POST", api.jobsets(ns), body)
            log.info("created JobSet", extra={"event": "train.jobset.create", "jobset": name, "nodes": nodes})
        except KubeApiError as exc:
            if exc.status != 409:  # 409: another attempt created it just now; wait for that one
                raise
    label = f"training on Kubernetes (JobSet {name}) steps"
    while True:
        jobset = api.get_jobset(ns, name)
        if jobset is None:
            raise TrainingLaunchError(f"JobSet {ns}/{name} was deleted while the stage waited for it")
        state = terminal(jobset)
        if state == "Failed":
            raise TrainingLaunchError(failure_message(api, ns, jobset))
        if state == "Completed":
            break
        if on_progress is not None:
            on_progress(label, *read_progress(progress_file))
        time.sleep(launcher.poll_s)
    api.request("DELETE", api.jobsets(ns, name), {"propagationPolicy": "Background"})
    log.info("JobSet completed and deleted", extra={"event": "train.jobset.done", "jobset": name})
    return name
