"""Request and response models of the REST API: what ``/docs`` shows is the contract.

Views are read models built by :mod:`services.api.views` from the scheduler's state (Redis) and the
run directory. Models whose content grows with the product (per-stage counts, evaluation rows)
allow extra fields, so a new count reaches clients without an API change.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..eta import RunEta
from ..scheduler import RunStatus


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(BaseModel):
    ok: bool


class Readiness(BaseModel):
    ok: bool
    redis: str | None = Field(None, description="Why Redis is not reachable (only when ok is false).")
    scheduler: str | None = Field(
        None, description="Why the scheduler is not ready: no recent completed tick (only when ok is false)."
    )


class RunCreated(BaseModel):
    id: str
    status: RunStatus
    run_dir: str


class RunStatusChange(BaseModel):
    """The answer to cancel and resume."""

    id: str
    status: RunStatus


class RunListItem(_Open):
    """A run as the scheduler records it in Redis (values as stored: strings)."""

    id: str
    status: str | None = None
    run_dir: str | None = None
    iteration: str | None = None
    stage: str | None = None
    error: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    source: Literal["service", "disk"] = Field(
        "service",
        description="service: started through the API; disk: found in the runs folder (made by "
        "`spar run`), read-only until POST .../resume hands it to the scheduler.",
    )


class StageProgress(BaseModel):
    """Shards done of one stage of one iteration; ``complete`` once its manifest is written."""

    iteration: int
    stage: str
    done: int
    total: int
    complete: bool


class StageCost(_Open):
    """What one finished stage cost: shards, engine calls, generated tokens, summed shard seconds."""

    stage: str
    shards: int
    engine_calls: int
    tokens_generated: int
    seconds: float


class TrainingRow(_Open):
    """One training stage of an iteration: the new version and its loss / margin / NLL numbers."""

    stage: str
    new_version: str
    objective: str | None = None
    records: int | float | None = None
    steps: int | None = None
    first_loss: float | int | None = None
    last_loss: float | int | None = None
    margin_start: float | None = None
    margin_end: float | None = None
    target_nll_before: float | None = None
    target_nll_after: float | None = None
    peak_rss_mb: float | None = None
    loss_curve: list[float] = Field(default_factory=list)
    hub: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The new version's push to a hub (`hub:` in the config): repo_id, revision, status "
        "('pushed' or 'failed'), commit_url or error. Empty without a push.",
    )


class Evaluation(BaseModel):
    """Rows written by the ``eval`` stage: IFEval per actor version, judge accuracy per refiner version."""

    ifeval: list[dict[str, Any]] = Field(default_factory=list)
    judge: list[dict[str, Any]] = Field(default_factory=list)
    validation: list[dict[str, Any]] = Field(
        default_factory=list, description="Actor versions scored on evaluation.validation_prompts."
    )


class IterationSummary(BaseModel):
    """Headline numbers and costs of one iteration, from whatever stages are done."""

    iteration: int
    metrics: dict[str, float | int | None] = Field(
        description="prompts, responses, pass_rate, negatives, trees, success_rate, "
        "mean_expansions_per_tree, pairs, rft_examples, ... (None until the stage has run)."
    )
    stages: list[StageCost]
    training: list[TrainingRow]
    evaluation: Evaluation


class IterationView(IterationSummary):
    """``GET /v1/runs/{id}/iterations/{t}``: the summary plus that iteration's shard progress."""

    progress: list[StageProgress]


class RunningStage(BaseModel):
    """One stage a run has enqueued or running."""

    iteration: int
    stage: str


class RunView(BaseModel):
    """``GET /v1/runs/{id}``: status, where the run is, progress, per-iteration summaries, versions."""

    id: str
    status: RunStatus | Literal["incomplete"] | None = Field(
        description="The scheduler's status; a run found on disk is 'succeeded' once every stage is "
        "done, else 'incomplete' (stopped, or still running under `spar run`)."
    )
    error: str | None
    iteration: int = Field(description="The iteration of the first running stage (kept for older clients).")
    stage: str | None = Field(description="The first running stage (kept for older clients; see running).")
    running: list[RunningStage] = Field(
        default_factory=list,
        description="Every stage of the run ready or running now, in pipeline order: independent stages "
        "(train_actor and train_refiner, the next iteration's sample during eval) run at once.",
    )
    progress: list[StageProgress]
    iterations: list[IterationSummary]
    models: dict[str, str] = Field(description="Latest published version per role, e.g. {'actor': 'v1'}.")
    eta: RunEta | None = Field(
        None,
        description="Time left, summed over the stages still to run (one after another, so an upper bound "
        "when the pools run several at once); None when it could not be computed.",
    )
    created_at: float
    updated_at: float
    run_dir: str
    source: Literal["service", "disk"] = Field(
        "service", description="service: started through the API; disk: made by `spar run` (read-only)."
    )


class WorkerInfo(_Open):
    """A live worker as it publishes itself in Redis (expires when the worker dies)."""

    name: str
    role: str | None = None
    host: str | None = None
    pid: str | None = None
    models: str | None = None
    engine_pids: str | None = Field(
        None, description="Process ids of the engine host the worker holds; empty when none is loaded."
    )
    current_job: str | None = None
    last_seen: str | None = None


class PromptConstraints(BaseModel):
    """A prompt's IFEval-style constraints, what the verifier judge checks (as in a prompts file)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    instruction_id_list: list[Annotated[str, Field(max_length=200)]] = Field(
        ..., min_length=1, max_length=64, description="IFEval instruction ids, e.g. punctuation:no_comma."
    )
    kwargs: list[dict[str, Any]] | None = Field(
        None, max_length=64, description="One object of arguments per instruction id (None: no arguments)."
    )


class RefineRequest(BaseModel):
    """One response to refine. Unknown keys, NaN and Infinity are refused (422 naming the field).

    ``metadata`` carries the prompt's constraints for a run whose ``judge.backend`` uses the
    verifier: required by ``verifier`` (without it: 422 naming ``metadata``), used where given by
    ``verifier_then_llm`` (the refiner judges a request without it), ignored by ``llm``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    run_id: str = Field(..., min_length=1, max_length=200)
    prompt: str = Field(..., min_length=1, max_length=100_000, description="At most 100000 characters.")
    response: str = Field(..., max_length=200_000, description="At most 200000 characters.")
    wait_s: float = Field(
        30.0,
        ge=0.0,
        le=120.0,
        description="Wait this long (<= 120 s; no thread is held) for the result, then return a job id.",
    )
    metadata: PromptConstraints | None = Field(
        None,
        description="The prompt's IFEval-style constraints, for the verifier judge: required when the "
        "run's judge.backend is 'verifier', used by 'verifier_then_llm', ignored by 'llm'.",
    )


class RefineResult(BaseModel):
    """A refinement job: finished (200, ``result``), failed (500, ``error``) or pending (202, ``poll``)."""

    job_id: str
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None
    poll: str | None = None


TreeStatus = Literal["success", "exhausted", "budget", "no_children"]


class NodeView(BaseModel):
    """One node of a refinement tree, as the iteration browser shows it.

    Node 0 is the root: the actor's negative response and the judgment that failed it (value 0, no
    parent, no raw reply). Every other node is a refinement of its parent by the refiner.
    """

    id: int
    parent: int | None
    depth: int
    value: float = Field(description="Share of the judge's votes that passed this response (0 for the root).")
    vote: dict[str, int] = Field(description="Vote counts of the node's judgment: pass, fail, invalid, ...")
    judgment: str = Field(description="The judgment kept for this response (the majority's).")
    response: str = Field(description="The refined response (the root: the negative itself).")
    raw: str | None = Field(description="The refiner's full reply the refinement was parsed from.")
    on_success_path: bool = Field(description="On the path from the root to the tree's success_id.")


class TreeView(BaseModel):
    """One refinement tree of an iteration (``iter_<t>/refine/shard_<N>.jsonl``, a TreeRow)."""

    prompt_id: str
    key: str = Field(description="<prompt id>#<response index>: which negative the tree refines.")
    prompt: str
    status: TreeStatus
    success_id: int | None
    success_path: list[int] = Field(description="Node ids from the root to success_id (empty without one).")
    expansions: int
    parse_failures: int
    dropped_unparsed: int
    dropped_ties: int
    unfaithful: int = Field(0, description="Refinements search.guard refused before judging them.")
    max_depth_reached: int
    shard: int = Field(description="The refine shard the tree was read from.")
    nodes: list[NodeView]


class TreePage(BaseModel):
    """``GET /v1/runs/{id}/iterations/{t}/trees``: a page of trees, in file order across shards."""

    total: int = Field(description="Trees matching the filter, over every shard written so far.")
    offset: int
    limit: int
    trees: list[TreeView]


class PairView(BaseModel):
    """One DPO pair (``iter_<t>/assemble/pairs.jsonl``, a PairRow)."""

    prompt_id: str
    tree: str = Field(description="Key of the tree the pair came from.")
    prompt: str
    chosen: str = Field(description="The tree's successful refinement.")
    rejected: str = Field(description="The tree's root: the actor's negative response.")
    rejected_judgment: str
    chosen_value: float
    depth: int


class PairPage(BaseModel):
    """``GET /v1/runs/{id}/iterations/{t}/pairs/sample``: a page of pairs as JSON."""

    total: int
    offset: int
    limit: int
    pairs: list[PairView]
