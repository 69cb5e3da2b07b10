"""One iteration of a run: its summary and progress, and its DPO pairs as JSONL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import StreamingResponse

from shared.config import MAX_ITERATIONS

from ...summary import iteration_summary
from ..deps import RunPathsDep, require_token
from ..models import IterationView
from ..views import stage_progress

Iteration = Annotated[int, Path(ge=0, lt=MAX_ITERATIONS, description="Iteration number, from 0.")]

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
    file = paths.data_file(iteration, "pairs.jsonl")
    if not file.exists():
        raise HTTPException(404, f"iteration {iteration} of {run_id} has no pairs yet (assemble not done)")

    def lines() -> Iterator[bytes]:
        with file.open("rb") as f:
            yield from f

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{run_id}-{iteration}-pairs.jsonl"'},
    )
