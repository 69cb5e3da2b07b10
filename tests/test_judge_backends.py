"""One factory from ``judge.backend`` to a judge, and ``/v1/refine`` judged by the run's backend.

The factory: every value the config accepts builds a judge of the one protocol; a name it does not
know fails naming the choices. Inference-time refinement (``workers.jobs.refine_one``, the job
behind ``POST /v1/refine``) used to build an LLM judge whatever the run said; on a verifier run it
must judge with the checker, and refuse a request that carries no constraints to check: in the
job (before any model loads) and in the API (a 422 naming ``metadata``, nothing queued).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError
from redis import Redis
from rq import Queue
from scripted import ScriptedEngine, refined, yes
from service_harness import RedisServer

from services.api import Settings, create_app
from services.runs import create_run, load_config_file
from shared.config import JudgeBackendName, JudgeConfig
from shared.judges import (
    BACKENDS,
    LlmJudge,
    VerifierOnlyJudge,
    VerifierThenLlmJudge,
    backend_of,
    build_judge,
)
from shared.judging import Judge, JudgmentCache
from shared.runtime.queue import SERIALIZER
from shared.verdict import Verdict
from workers import jobs

LOWERCASE = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
PROMPT = "Describe tea. Use only lowercase letters."
CAPITALISED = "Tea Is A Drink."


# ----- the factory -----------------------------------------------------------------------------------


def test_the_table_holds_exactly_the_backends_the_config_accepts() -> None:
    assert set(BACKENDS) == set(get_args(JudgeBackendName))
    assert all(name == b.name for name, b in BACKENDS.items())


@pytest.mark.parametrize(
    ("name", "kind", "streams"),
    [
        ("llm", LlmJudge, True),
        ("verifier", VerifierOnlyJudge, True),
        ("verifier_then_llm", VerifierThenLlmJudge, False),
    ],
)
def test_every_backend_builds_a_judge_of_the_one_protocol(name: str, kind: type, streams: bool) -> None:
    engine = ScriptedEngine(judge_fn=yes)
    metadata = {PROMPT: LOWERCASE}
    judge = build_judge(
        JudgeConfig(votes=3, backend=name), engine, seed=0, tie_retries=1, metadata_by_prompt=metadata
    )
    assert isinstance(judge, kind)
    assert (judge.stream() is not None) is streams
    (judgment,) = judge.judge([(PROMPT, CAPITALISED)])
    # the LLM (scripted: always Yes) or the checker (the answer is not lowercase) decides
    assert judgment.label is (Verdict.PASS if name == "llm" else Verdict.FAIL)
    assert bool(engine.calls) is (name == "llm")
    assert judge.agreement([(PROMPT, CAPITALISED)], 4) == (
        {"agreement_n": 1, "agreement_agree": 0, "agreement_llm_undecided": 0}
        if name == "verifier_then_llm"
        else {}
    )


def test_the_llm_backend_shares_the_callers_cache_and_settings() -> None:
    cache = JudgmentCache()
    judge = build_judge(
        JudgeConfig(votes=5, temperature=0.3, max_new_tokens=77),
        ScriptedEngine(),
        seed=9,
        tie_retries=2,
        cache=cache,
    )
    assert isinstance(judge, LlmJudge)
    llm = judge.stream()
    assert isinstance(llm, Judge) and llm.cache is cache
    assert (llm.votes, llm.temperature, llm.max_new_tokens, llm.seed, llm.tie_retries) == (5, 0.3, 77, 9, 2)


def test_an_unknown_backend_fails_naming_the_choices() -> None:
    with pytest.raises(ValidationError, match="backend"):
        JudgeConfig(backend="oracle")
    bypassed = JudgeConfig.model_construct(backend="oracle")  # what validation did not see
    message = "unknown judge.backend 'oracle'; expected one of: llm, verifier, verifier_then_llm"
    with pytest.raises(ValueError, match=message):
        build_judge(bypassed, ScriptedEngine(), seed=0, tie_retries=0)
    with pytest.raises(ValueError, match=message):
        backend_of("oracle")


def test_the_verifier_refuses_a_prompt_without_constraints() -> None:
    judge = build_judge(JudgeConfig(backend="verifier"), ScriptedEngine(), seed=0, tie_retries=0)
    with pytest.raises(ValueError, match="no IFEval metadata"):
        judge.judge([("Tell a joke.", "Ha.")])
    assert backend_of("verifier").missing_metadata(None) is not None
    assert "metadata.instruction_id_list" in (backend_of("verifier").missing_metadata({"kwargs": []}) or "")
    assert backend_of("verifier").missing_metadata(LOWERCASE) is None
    assert backend_of("llm").missing_metadata(None) is None
    assert backend_of("verifier_then_llm").missing_metadata(None) is None


# ----- refine_one: the job behind POST /v1/refine ---------------------------------------------------


class OneEngine:
    """The worker's engine slot, holding a scripted engine; counts the models asked for."""

    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine
        self.asked = 0
        self.config: Any = None

    def engine_for(self, role: str, version: Any) -> ScriptedEngine:
        self.asked += 1
        return self.engine


def make_run(root: Path, backend: str) -> Path:
    (root / "prompts.jsonl").write_text(json.dumps({"id": "m0", "prompt": PROMPT, **LOWERCASE}) + "\n")
    config = {
        "name": "refine-one",
        "prompts": "prompts.jsonl",
        "actor": {"model": "tiny"},
        "refiner": {"model": "tiny"},
        "judge": {"votes": 3, "backend": backend},
        "search": {"branching": 2, "max_depth": 2},
        "stages": ["sample", "judge", "refine", "assemble"],
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return create_run(load_config_file(root / "config.yaml"), root / "runs", f"run-{backend}").root


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, OneEngine]]:
    # The LLM says Yes to everything; the refiner lowercases. Only the checker fails the answer.
    engine = ScriptedEngine(judge_fn=yes, refine_fn=lambda p, r, j, i, a: refined(r.lower()))
    slot = OneEngine(engine)
    monkeypatch.setenv("SPAR_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("SPAR_RUNS_DIR", raising=False)
    monkeypatch.setattr(jobs, "ENGINES", slot)
    yield tmp_path, slot


def test_refine_on_a_verifier_run_is_judged_by_the_verifier(worker: tuple[Path, OneEngine]) -> None:
    root, slot = worker
    run = make_run(root, "verifier")
    result = jobs.refine_one(str(run), PROMPT, CAPITALISED, metadata=LOWERCASE)
    assert result["judge_backend"] == "verifier"
    assert result["initial_label"] == int(Verdict.FAIL)  # the scripted LLM would have said Yes
    assert result["refined"] is True and result["response"] == CAPITALISED.lower()
    assert result["value"] == 1.0  # the checker's unanimous one-vote verdict
    assert not slot.engine.judged  # the refiner refined; it never judged
    assert slot.engine.refine_attempts


def test_refine_on_a_verifier_run_without_constraints_fails_before_loading_a_model(
    worker: tuple[Path, OneEngine],
) -> None:
    root, slot = worker
    run = make_run(root, "verifier")
    with pytest.raises(ValueError, match=r"judge.backend 'verifier'.*metadata\.instruction_id_list"):
        jobs.refine_one(str(run), PROMPT, CAPITALISED)
    assert slot.asked == 0


@pytest.mark.parametrize("backend", ["llm", "verifier_then_llm"])
def test_refine_on_other_runs_without_constraints_is_judged_by_the_refiner(
    worker: tuple[Path, OneEngine], backend: str
) -> None:
    root, slot = worker
    run = make_run(root, backend)
    result = jobs.refine_one(str(run), PROMPT, CAPITALISED)
    assert result["judge_backend"] == backend
    assert result["initial_label"] == int(Verdict.PASS) and result["refined"] is False
    assert slot.engine.judged[(PROMPT, CAPITALISED)] == 1


def test_refine_on_a_verifier_then_llm_run_uses_the_constraints_it_is_given(
    worker: tuple[Path, OneEngine],
) -> None:
    root, slot = worker
    run = make_run(root, "verifier_then_llm")
    result = jobs.refine_one(str(run), PROMPT, CAPITALISED, metadata=LOWERCASE)
    assert result["initial_label"] == int(Verdict.FAIL) and result["refined"] is True
    assert not slot.engine.judged


# ----- POST /v1/refine ----------------------------------------------------------------------------------

TOKEN = "judge-backends-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_api_refuses_a_verifier_run_request_without_metadata_and_queues_one_with_it(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    root = tmp_path / "data"
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "prompts.jsonl").write_text(json.dumps({"prompt": PROMPT, **LOWERCASE}) + "\n")
    settings = Settings(api_token=TOKEN, scheduler=False, redis_url=server.url, data_root=root)
    body = {
        "name": "verifier-refine",
        "prompts": "prompts.jsonl",
        "actor": {"model": "models/tiny"},
        "refiner": {"model": "models/tiny"},
        "judge": {"backend": "verifier"},
        "stages": ["sample", "judge", "refine", "assemble"],
    }
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            run_id = c.post("/v1/runs", json=body, headers=AUTH).json()["id"]
            request = {"run_id": run_id, "prompt": PROMPT, "response": CAPITALISED, "wait_s": 0}
            refused = c.post("/v1/refine", json=request, headers=AUTH)
            assert refused.status_code == 422, refused.text
            (error,) = refused.json()["detail"]
            assert error["field"] == "metadata" and "judge.backend 'verifier'" in error["msg"]
            queue = Queue("refiner", connection=Redis.from_url(server.url), serializer=SERIALIZER)
            assert queue.count == 0  # nothing was queued

            malformed = c.post("/v1/refine", json=request | {"metadata": {"kwargs": [{}]}}, headers=AUTH)
            assert malformed.status_code == 422
            assert "metadata.instruction_id_list" in {e["field"] for e in malformed.json()["detail"]}

            accepted = c.post("/v1/refine", json=request | {"metadata": LOWERCASE}, headers=AUTH)
            assert accepted.status_code == 202, accepted.text
            (job,) = queue.get_jobs()
            assert job.kwargs["metadata"] == LOWERCASE  # the worker's refine_one gets the constraints
    finally:
        server.stop()
