"""A small, strict stand-in for ``kustomize build``, for the tests of ``deploy/``.

kubectl/kustomize are not installed on the development machines or in CI, and no PyPI package ships
kustomize, so the tests render the kustomizations with this instead. It implements exactly the
subset ``deploy/`` uses and **refuses anything else** (an unknown kustomization field, a patch
directive, a patch whose target is missing): a manifest change that needs more of kustomize fails
here loudly instead of rendering something kustomize would not.

Supported:

- ``resources``: YAML files (multi-document) and directories holding a kustomization;
- ``components`` (``kind: Component``): their resources are added, then their patches applied to
  everything accumulated so far, as kustomize does;
- ``patches`` with ``path`` only: strategic-merge patches, matched to a resource by kind and name;
- ``namespace``: set on every namespaced resource.

Strategic merge, as Kubernetes defines it for the fields used here: maps merge recursively, ``null``
deletes a key, the lists below merge item by item on their merge key (``containers`` by ``name``,
``volumeMounts`` by ``mountPath``...), every other list is replaced whole (``tolerations``,
``command``, ``args``...).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# patchMergeKey of the Kubernetes API for the lists deploy/ patches or might patch
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}

# cluster-scoped kinds that deploy/ may contain: the namespace transformer leaves them alone
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "RuntimeClass",
}

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "namespace"}


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not implement, or is inconsistent."""


Doc = dict[str, Any]


def build(directory: Path) -> list[Doc]:
    """Render the kustomization in ``directory`` (like ``kustomize build DIR``)."""
    return _build(Path(directory).resolve(), expect_kind="Kustomization", stack=())


def _load_kustomization(directory: Path, expect_kind: str) -> dict[str, Any]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(data) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields not supported by the test renderer: {sorted(unknown)}")
    kind = data.get("kind", "Kustomization")
    if kind != expect_kind:
        raise KustomizeError(f"{path}: kind {kind!r} where a {expect_kind} is expected")
    return data


def _load_docs(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or not doc.get("kind") or not doc.get("metadata", {}).get("name"):
            raise KustomizeError(f"{path}: every document needs kind and metadata.name")
    return docs


def _build(directory: Path, expect_kind: str, stack: tuple[Path, ...]) -> list[Doc]:
    # kustomize refuses a root that contains one already being built ("cycle detected")
    for seen in stack:
        if seen == directory or seen.is_relative_to(directory):
            raise KustomizeError(f"cycle: {directory} contains {seen}, which is being built")
    stack = (*stack, directory)
    data = _load_kustomization(directory, expect_kind)

    docs = _resources(directory, data, stack)
    for entry in data.get("components") or []:
        component = (directory / entry).resolve()
        cdata = _load_kustomization(component, "Component")
        if cdata.get("components") or cdata.get("namespace"):
            raise KustomizeError(f"{component}: nested components/namespace are not supported")
        # a component's own resources and patches, applied to what the including kustomization has
        docs += _resources(component, cdata, (*stack, component))
        _apply_patches(component, cdata, docs)

    _apply_patches(directory, data, docs)

    namespace = data.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = namespace

    _check_unique(directory, docs)
    return docs


def _resources(directory: Path, data: dict[str, Any], stack: tuple[Path, ...]) -> list[Doc]:
    docs: list[Doc] = []
    for entry in data.get("resources") or []:
        target = (directory / entry).resolve()
        if target.is_dir():
            docs += _build(target, "Kustomization", stack)
        elif target.is_file():
            docs += _load_docs(target)
        else:
            raise KustomizeError(f"{directory}: resource {entry!r} does not exist")
    return docs


def _apply_patches(directory: Path, data: dict[str, Any], docs: list[Doc]) -> None:
    for entry in data.get("patches") or []:
        if set(entry) != {"path"}:
            raise KustomizeError(f"{directory}: only `patches: - path: FILE` is supported, got {entry}")
        for patch in _load_docs(directory / entry["path"]):
            matches = [
                d
                for d in docs
                if d["kind"] == patch["kind"]
                and d["metadata"]["name"] == patch["metadata"]["name"]
                and d.get("apiVersion") == patch.get("apiVersion")
            ]
            if len(matches) != 1:
                raise KustomizeError(
                    f"{directory / entry['path']}: {len(matches)} resources match "
                    f"{patch['kind']}/{patch['metadata']['name']} (need exactly one)"
                )
            strategic_merge(matches[0], patch)


def strategic_merge(base: Doc, patch: Doc) -> Doc:
    """Merge ``patch`` into ``base`` in place (strategic merge for the fields above) and return it."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise KustomizeError(f"patch directive {key!r} is not supported by the test renderer")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(base.get(key), list):
            _merge_list(base[key], value, MERGE_KEYS[key])
        else:
            base[key] = copy.deepcopy(value)
    return base


def _merge_list(base: list[Any], patch: list[Any], merge_key: str) -> None:
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise KustomizeError(f"list item without its merge key {merge_key!r}: {item!r}")
        for existing in base:
            if isinstance(existing, dict) and existing.get(merge_key) == item[merge_key]:
                strategic_merge(existing, item)
                break
        else:
            base.append(copy.deepcopy(item))


def _check_unique(directory: Path, docs: list[Doc]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for doc in docs:
        ident = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        if ident in seen:
            raise KustomizeError(f"{directory}: {ident} defined twice")
        seen.add(ident)
