"""The live workers, as each publishes itself in Redis."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from shared.runtime.queue import worker_key

from ..deps import RedisDep, require_token
from ..models import WorkerInfo

router = APIRouter(prefix="/v1/workers", tags=["workers"], dependencies=[Depends(require_token)])


@router.get("", response_model=list[WorkerInfo])
def list_workers(redis: RedisDep) -> list[dict]:
    out = []
    for key in redis.scan_iter(match=worker_key("*")):
        fields = {k.decode(): v.decode() for k, v in redis.hgetall(key).items()}
        out.append({"name": key.decode().split(":", 2)[2], **fields})
    return sorted(out, key=lambda w: w["name"])
