"""One iteration of a run: its summary and progress, its DPO pairs as JSONL, and a browser of its
refinement trees and pairs (pages as JSON, for the dashboard's "inspect iteration" panel)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Annotated, Any, BinaryIO, TypeVar, get_args

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from shared.config import MAX_ITERATIONS
from shared.errors import RunConflictError
from shared.records import PairRow, TreeRow
from shared.runtime.artifacts import RunPaths
from shared.runtime.confinement import OutsideRootError, open_inside

from ...summary import iteration_summary
from ..deps import RunPathsDep, require_token
from ..models import IterationView, PairPage, TreePage, TreeStatus
from ..views import stage_progress

Iteration = Annotated[int, Path(ge=0, lt=MAX_ITERATIONS, description="Iteration number, from 0.")]
PAGE_MAX = 200  # a tree carries every node's raw reply: 200 of them is already megabytes
Offset = Annotated[int, Query(ge=0, le=10**9, description="Items to skip, in file order.")]
Limit = Annotated[int, Query(ge=1, le=PAGE_MAX, description=f"Items in the page (1..{PAGE_MAX}).")]

router = APIRouter(
    prefix="/v1/runs/{run_id}/iterations", tags=["iterations"], dependencies=[Depends(require_token)]
)


@router.get("/{iteration}", response_model=IterationView)
def get_iteration(run_id: str, iteration: Iteration, paths: RunPathsDep) -> dict:
    if not (paths.root / f"iter_{iteration}").exists():
        raise HTTPException(404, f"run {run_id} has no iteration {iteration} yet")
    return iteration_summary(paths, iteration) | {"progress": stage_progress(paths, only=iteration)}


@router.get(
    "/{iteration}/pairs",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}},
            "description": "one DPO pair per line: prompt, chosen, rejected, ...",
        }
    },
)
def download_pairs(run_id: str, iteration: Iteration, paths: RunPathsDep) -> StreamingResponse:
    file = _pairs_file(run_id, iteration, paths)
    handle = _open(file, paths, run_id)  # opened (and checked) now: a refusal is a 409, not a cut stream

    def lines() -> Iterator[bytes]:
        with handle as f:
            yield from f

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{run_id}-{iteration}-pairs.jsonl"'},
    )


@router.get("/{iteration}/pairs/sample", response_model=PairPage)
def sample_pairs(
    run_id: str, iteration: Iteration, paths: RunPathsDep, offset: Offset = 0, limit: Limit = 20
) -> dict[str, Any]:
    """A page of the iteration's DPO pairs as JSON (the whole file: ``/pairs``, as NDJSON)."""
    file = _pairs_file(run_id, iteration, paths)
    pairs, total = [], 0
    for where, line in _records([(0, file)], paths, run_id):
        if offset <= total < offset + limit:
            pairs.append(_parse(PairRow, line, where, run_id).as_record())
        total += 1
    return {"total": total, "offset": offset, "limit": limit, "pairs": pairs}


@router.get("/{iteration}/trees", response_model=TreePage)
def list_trees(
    run_id: str,
    iteration: Iteration,
    paths: RunPathsDep,
    offset: Offset = 0,
    limit: Limit = 20,
    status: Annotated[TreeStatus | None, Query(description="Only trees whose search ended so.")] = None,
) -> dict[str, Any]:
    """A page of the iteration's refinement trees, in file order across the refine shards written
    so far (a running stage shows the shards already done).

    The files are read line by line: only the trees in the page are parsed; the others are only
    counted (with a status filter, their status is read from the start of the line).
    """
    shards = refine_shards(paths, iteration)
    if not shards:
        raise HTTPException(
            404,
            f"iteration {iteration} of {run_id} has no refinement trees yet "
            "(the refine stage has written no shard)",
        )
    trees, total = [], 0
    for where, line in _records(shards, paths, run_id):
        if status is not None and tree_status(line) != status:
            continue
        if offset <= total < offset + limit:
            trees.append(tree_view(_parse(TreeRow, line, where, run_id), shard=where[0]))
        total += 1
    return {"total": total, "offset": offset, "limit": limit, "trees": trees}


# --- reading the files ---------------------------------------------------------------------------


def _pairs_file(run_id: str, iteration: int, paths: RunPaths) -> FilePath:
    file = paths.data_file(iteration, "pairs.jsonl")
    if not file.exists():
        raise HTTPException(404, f"iteration {iteration} of {run_id} has no pairs yet (assemble not done)")
    return file


def refine_shards(paths: RunPaths, iteration: int) -> list[tuple[int, FilePath]]:
    """(shard number, file) of every refine shard written so far, in shard order.

    Shards are written atomically (a hidden temporary file, then a rename), so a listed file is
    whole; sorted by number, not by name, so that a six-digit shard comes after ``shard_99999``.
    """
    found = []
    for file in paths.stage_dir(iteration, "refine").glob("shard_*.jsonl"):
        digits = file.name.removeprefix("shard_").removesuffix(".jsonl")
        if digits.isdigit():
            found.append((int(digits), file))
    return sorted(found)


def _open(file: FilePath, paths: RunPaths, run_id: str) -> BinaryIO:
    """A run file opened for reading, refused (409) when it is a link that leaves the run's folder."""
    try:
        return open_inside(file, paths.root)
    except OutsideRootError as exc:
        raise RunConflictError(f"run {run_id}: {exc}") from exc
    except OSError as exc:  # a link in place of the file (O_NOFOLLOW), a file made unreadable
        if isinstance(exc, FileNotFoundError):
            raise
        raise RunConflictError(f"run {run_id}: {file.name} cannot be read ({exc.strerror})") from exc


def _records(
    files: list[tuple[int, FilePath]], paths: RunPaths, run_id: str
) -> Iterator[tuple[tuple[int, FilePath, int], bytes]]:
    """Each non-blank line of ``files`` in order, with (shard, file, line number) for messages.

    Streamed: one line in memory at a time. A file removed since it was listed (a cleaned-up run)
    is skipped rather than failing the page; one that leads out of the run's folder is a 409.
    """
    for shard, file in files:
        try:
            handle = _open(file, paths, run_id)
        except FileNotFoundError:
            continue
        with handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield (shard, file, number), line


R = TypeVar("R", TreeRow, PairRow)
_STATUSES = frozenset(get_args(TreeStatus))
# A JSON string holds a quote only as \", so a bare `"status":` is always a key; in a TreeRow (fields
# in declaration order) the first one is the tree's own status, written before its long node list.
_STATUS_KEY = re.compile(rb'"status"\s*:\s*"([a-z_]+)"')


def tree_status(line: bytes) -> str | None:
    """The status of the tree on ``line``, read without parsing the whole (possibly large) line;
    a line in another layout is parsed in full."""
    match = _STATUS_KEY.search(line)
    if match and match.group(1).decode() in _STATUSES:
        return match.group(1).decode()
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("status") if isinstance(record, dict) else None


def _parse(model: type[R], line: bytes, where: tuple[int, FilePath, int], run_id: str) -> R:
    """One record of a run file; a line that is not one is a 409 naming the file and line (files
    are written atomically, so this is damage, not a shard still being written)."""
    try:
        return model.from_record(json.loads(line))
    except (ValueError, ValidationError) as exc:
        _, file, number = where
        raise RunConflictError(
            f"run {run_id}: {file.parent.parent.name}/{file.parent.name}/{file.name} line {number} "
            f"is not a {model.__name__} record ({str(exc).splitlines()[0][:200]})"
        ) from exc


def success_path(tree: TreeRow) -> list[int]:
    """Node ids from the root to ``success_id`` (empty without a success), by walking parents.

    Bounded by the node count, so a damaged file whose parents form a cycle cannot hang the API.
    """
    if tree.success_id is None:
        return []
    parents = {node.id: node.parent for node in tree.nodes}
    path: list[int] = []
    node: int | None = tree.success_id
    while node is not None and node in parents and len(path) <= len(parents):
        path.append(node)
        node = parents[node]
    return path[::-1]


def tree_view(tree: TreeRow, shard: int) -> dict[str, Any]:
    """A TreeRow as :class:`services.api.models.TreeView`: its nodes marked on or off the path to
    the success, which the dashboard highlights."""
    path = success_path(tree)
    on_path = set(path)
    record = tree.as_record()
    nodes = [
        {
            "id": node.id,
            "parent": node.parent,
            "depth": node.depth,
            "value": node.value,
            "vote": node.vote,
            "judgment": node.judgment,
            "response": node.response,
            "raw": node.raw,
            "on_success_path": node.id in on_path,
        }
        for node in tree.nodes
    ]
    return {k: v for k, v in record.items() if k != "nodes"} | {
        "success_path": path,
        "shard": shard,
        "nodes": nodes,
    }
