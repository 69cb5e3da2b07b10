"""Every record spar writes to a run directory, by name: the one place that says what a file holds.

Stages read and write their shards only through these models (``Model.from_record(dict)`` when
reading a JSON line, ``model.as_record()`` when writing one), so a renamed or missing field fails
loudly where it is read instead of turning into a silent default. Field order is the order written
to disk; a change to it changes the files (the tests pin pairs byte for byte). No other module
declares these fields again: the search's nodes are :class:`NodeRow` s, its trees are written by
``Tree.row`` and a judgment by :meth:`JudgedResponseRow.of`, each the one place of its conversion.

Files and their records (see ``docs/architecture.md`` for the layout):

============================================  ===========================================
``prompts/shard_N.jsonl``                     :class:`PromptRow`
``iter_t/sample/shard_N.jsonl``               :class:`SampleRow`
``iter_t/judge/shard_N.jsonl``                :class:`JudgeRow` (holding :class:`JudgedResponseRow`)
``iter_t/refine/shard_N.jsonl``               :class:`TreeRow` (holding :class:`NodeRow`)
``iter_t/assemble/pairs.jsonl``               :class:`PairRow`
``iter_t/assemble/rft.jsonl``                 :class:`RftExample`
``iter_t/assemble/shard_0.jsonl``             :class:`AssembleCounts`
``iter_t/iopo_groups/shard_0.jsonl``          :class:`IopoGroupRow`
``iter_t/<stage>/shard_N.done.json``          :class:`ShardDone` (holding :class:`StageSpec`)
``iter_t/<stage>/manifest.json``              :class:`StageManifest`
============================================  ===========================================

Per-stage counts (:class:`SampleCounts`, :class:`JudgeCounts`, :class:`RefineCounts`) are typed for
the same reason: the summary reads them by attribute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .judging import Judgment
from .stages import STAGE_DEFS
from .verdict import Verdict
from .voting import Vote


class Record(BaseModel):
    """A JSON record on disk: unknown keys are refused, fields are written in declaration order."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def as_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Self:
        return cls.model_validate(data)


class ChatTurn(Record):
    role: Literal["system", "user", "assistant"]
    content: str


# --- stage inputs and outputs ------------------------------------------------------------------


class PromptRow(Record):
    """One instruction of the run's prompt set (any extra input fields are kept as metadata)."""

    id: str
    prompt: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SampleRow(Record):
    """Stage 1: a prompt and the actor's K responses."""

    id: str
    prompt: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    responses: list[str]


class VoteCounts(Record):
    """How one round of judgments voted: how a judged response (and a tree's node) records its vote."""

    pass_: int = Field(alias="pass")
    fail: int
    invalid: int

    @classmethod
    def of(cls, vote: Vote) -> VoteCounts:
        return cls(pass_=vote.n_pass, fail=vote.n_fail, invalid=vote.n_invalid)


class JudgedResponseRow(Record):
    """Stage 2: one response with every judgment of its last round and the vote they gave.

    ``label``: 1 pass, 0 fail, None undecided; ``kept_index`` points into ``judgments`` at the one
    that agrees with the majority.
    """

    text: str
    label: int | None
    value: float | None
    votes: VoteCounts
    labels: list[int]
    judgments: list[str]
    kept_index: int | None
    rounds: int

    @property
    def kept(self) -> str | None:
        return None if self.kept_index is None else self.judgments[self.kept_index]

    @classmethod
    def of(cls, text: str, judgment: Judgment) -> JudgedResponseRow:
        """The row of ``text`` judged by ``judgment``: what a judgment is on disk, declared here only."""
        vote = judgment.vote
        return cls(
            text=text,
            label=None if vote.label is None else int(vote.label),
            value=vote.value,
            votes=VoteCounts.of(vote),
            labels=[int(v) for v in vote.labels],
            judgments=list(judgment.texts),
            kept_index=vote.kept_index,
            rounds=judgment.rounds,
        )

    def judgment(self, prompt: str) -> Judgment:
        """The judgment this row records, of its text under ``prompt`` (a later stage reuses it)."""
        vote = Vote(
            labels=tuple(Verdict(v) for v in self.labels),
            label=None if self.label is None else Verdict(self.label),
            kept_index=self.kept_index,
        )
        return Judgment(prompt, self.text, tuple(self.judgments), vote, self.rounds)


class JudgeRow(Record):
    """Stage 2: a prompt's judged responses and which of them are its negatives (indices)."""

    id: str
    prompt: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    responses: list[JudgedResponseRow]
    negatives: list[int]


class NodeRow(Record):
    """A node of a search tree; the root (id 0) is the negative, with value 0, no parent, no vote.

    The search grows its trees out of these rows (``shared.search_tree.Node`` is this class), so a
    node has one shape, in memory and on disk.
    """

    id: int
    parent: int | None
    depth: int
    response: str
    judgment: str
    value: float
    raw: str | None
    vote: dict[str, int]


class SearchedTree:
    """What a grown tree's readers use (its nodes, root and success), declared once for both shapes of
    a tree: the one the search grows (``shared.search_tree.Tree``) and its row (:class:`TreeRow`).
    ``shared.pairs`` reads either."""

    if TYPE_CHECKING:  # declared by each class (a pydantic field, a dataclass field), not here
        key: str
        prompt: str
        nodes: list[NodeRow]
        success_id: int | None

    @property
    def root(self) -> NodeRow:
        return self.nodes[0]

    @property
    def success(self) -> NodeRow | None:
        return None if self.success_id is None else self.nodes[self.success_id]


class TreeRow(SearchedTree, Record):
    """Stage 3: one search tree of a negative (``key`` = ``<prompt id>#<response index>``).

    Written from a finished search by ``shared.search_tree.Tree.row``, the one place a tree becomes a
    record; stage 4 reads these rows as they are.
    """

    prompt_id: str
    key: str
    prompt: str
    status: Literal["success", "exhausted", "budget", "no_children"]
    success_id: int | None
    expansions: int
    parse_failures: int
    dropped_unparsed: int
    dropped_ties: int
    unfaithful: int = 0  # refinements the guard refused (search.guard); rows before it have none
    max_depth_reached: int
    nodes: list[NodeRow]


class PairRow(Record):
    """Stage 4, for the actor: chosen = the tree's successful refinement, rejected = its root negative."""

    prompt_id: str
    tree: str
    prompt: str
    chosen: str
    rejected: str
    rejected_judgment: str
    chosen_value: float
    depth: int


class RftExample(Record):
    """Stage 4, for the refiner: a chat whose last (assistant) turn is the target."""

    kind: Literal["refinement", "judgment"]
    part: Literal["refinement", "tree_pass", "tree_fail", "stage2_fail", "stage2_pass"]
    prompt_id: str
    tree: str | None
    messages: list[ChatTurn]


class IopoGroupRow(Record):
    """``iopo_groups``: (x1, y1, x2, y2) = (x, y_refined, x', y_neg), both facts verified under x'."""

    key: str
    x1: str
    y1: str
    x2: str
    y2: str
    x2_source: Literal["refiner", "verifier"]
    x2_metadata: dict[str, Any] | None = None

    def as_record(self) -> dict[str, Any]:
        record = super().as_record()
        if record["x2_metadata"] is None:  # only verifier-written x' carry metadata
            del record["x2_metadata"]
        return record


# --- per-stage counts --------------------------------------------------------------------------


class Counts(Record):
    """Counts a stage reports per shard; the manifest sums them over shards.

    Optional counts (None) are left out of the record: they exist only for some settings.
    """

    def as_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SampleCounts(Counts):
    prompts: int = 0
    responses: int = 0


class JudgeCounts(Counts):
    prompts: int = 0
    responses: int = 0
    pass_: int = Field(0, alias="pass")
    fail: int = 0
    undecided: int = 0
    dissent: int = 0
    invalid_judgments: int = 0
    prompts_all_pass: int = 0
    prompts_with_negatives: int = 0
    negatives: int = 0
    agreement_n: int | None = Field(None, description="verifier_then_llm: responses judged both ways")
    agreement_agree: int | None = None
    agreement_llm_undecided: int | None = None


class RefineCounts(Counts):
    """``status_<s>`` counts trees by how their search ended (only statuses that occurred)."""

    model_config = ConfigDict(extra="allow")

    trees: int = 0
    successes: int = 0
    expansions: int = 0
    children: int = 0
    parse_failures: int = 0
    dropped_unparsed: int = 0
    dropped_ties: int = 0
    unfaithful: int = 0
    cache_hits: int = 0


class AssembleCounts(Counts):
    pairs_unique: int = 0
    pairs: int = 0
    rft_refinement_candidates: int = 0
    rft_refinement: int = 0
    rft_tree_pass_candidates: int = 0
    rft_tree_pass: int = 0
    rft_tree_fail_candidates: int = 0
    rft_tree_fail: int = 0
    rft_stage2_fail_candidates: int = 0
    rft_stage2_fail: int = 0
    rft_stage2_pass_candidates: int = 0
    rft_stage2_pass: int = 0
    rft: int = 0


class TrainCounts(Counts):
    """A training stage: records trained on, and 1 if a new version was trained (0: an alias)."""

    records: int = 0
    trained: int = 0


# --- model versions ----------------------------------------------------------------------------


class DataRef(Record):
    """The data a version was trained on, by path and content hash."""

    file: str
    sha256: str
    records: int


class VersionMetadata(Record):
    """``models/<role>/v<k>/spar_version.json``: what a published version is and how it was made.

    Its existence is the record that the training is done. A version with ``alias_of`` is its
    parent's weights (nothing to learn from); one with ``adapter`` is a LoRA adapter on ``base_model``.
    """

    role: Literal["actor", "refiner"]
    version: str
    parent: str
    objective: str | None = None
    data: DataRef
    hyperparameters: dict[str, Any]
    created_at: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    adapter: bool = False
    base_model: str | None = None
    distributed: str | None = None
    num_processes: int | None = None
    alias_of: str | None = None
    reason: str | None = None
    weights_sha256: str | None = Field(
        None,
        description="Digest of the weight files (shared.runtime.versions.weights_digest): what a "
        "version rebuilt after `spar unpack` must match. Absent on an alias and on older versions.",
    )

    def as_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class HubPush(Record):
    """``<run>/hub/<role>-v<k>.json``: the last push of a published version to a hub (``hub:``).

    Kept beside the version, not in it: the version folder is what gets uploaded, and its metadata is
    final once published. ``fingerprint`` (file names, sizes and modification times) is what a retried
    job compares to push a version once: the same target and fingerprint after a successful push is
    a no-op, a card rewritten by the eval stage is a change.
    """

    role: Literal["actor", "refiner"]
    version: str
    repo_id: str
    revision: str
    endpoint: str
    status: Literal["pushed", "failed"]
    fingerprint: str
    files: list[str] = Field(default_factory=list, description="Paths uploaded, relative to the version.")
    commit_url: str | None = None
    error: str | None = Field(None, description="Why the push failed, and what to change.")
    at: str = Field(..., description="When this push finished (UTC, ISO 8601).")


# --- bookkeeping -------------------------------------------------------------------------------


class StageSpec(Record):
    """One unit of work: a shard of a stage of an iteration of a run.

    The JSON payload of a shard job on the queue, and the ``spec`` of its ``.done.json``: one model
    for both, so the queue's contract and the record on disk cannot drift apart.
    """

    model_config = ConfigDict(frozen=True)

    run_dir: str = Field(..., description="The run's directory (under the configured runs root).")
    iteration: int = Field(..., ge=0)
    stage: str = Field(..., description="A stage of the stage table (shared/stages.py), init included.")
    shard: int = Field(..., ge=0)

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        """A job naming no stage of the table is refused where it is parsed, not by a KeyError later."""
        if value not in STAGE_DEFS:
            raise ValueError(f"unknown stage {value!r}; stages are {list(STAGE_DEFS)}")
        return value


class ShardOutput(Record):
    """What a stage produced for one shard: the fields a stage function returns.

    The completion record and the stage manifest carry these same fields (the manifest sums them),
    so they are declared once here.
    """

    models: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    counts: dict[str, int | float] = Field(default_factory=dict)
    engine: dict[str, int] = Field(default_factory=dict)


class _Ordered(ShardOutput):
    """A record holding :class:`ShardOutput`'s fields, its record in ``field_order``: the order these
    records have always had (inheritance alone would put the inherited fields first). The files are
    written with sorted keys, but the dicts are also returned (``write_stage_manifest``) and served."""

    field_order: ClassVar[tuple[str, ...]] = ()

    def as_record(self) -> dict[str, Any]:
        record = super().as_record()
        assert set(record) == set(self.field_order), f"{type(self).__name__}.field_order is out of date"
        return {name: record[name] for name in self.field_order}


class ShardDone(_Ordered):
    """A shard's completion record, written LAST: the shard is done exactly when this file exists."""

    field_order: ClassVar[tuple[str, ...]] = (
        "spec",
        "config_hash",
        "models",
        "metrics",
        "counts",
        "engine",
        "seconds",
        "finished_at",
        "started_at",
        "resolved",
    )

    spec: StageSpec
    config_hash: str
    seconds: float
    finished_at: float
    started_at: float | None = Field(
        None,
        description="When the worker took the shard up (epoch seconds; engine loads included, unlike "
        "``seconds``): with ``finished_at``, what a pool's busy and idle time is measured from. None in "
        "records older than it.",
    )
    resolved: dict[str, Any] | None = Field(
        None,
        description="What the machine resolved beyond the config (engine release, dtype, training "
        "precision): a fork reuses the shard only where these match. None in records older than it.",
    )


class StageManifest(_Ordered):
    """A stage's totals once every shard is done: counts and engine usage summed over shards."""

    field_order: ClassVar[tuple[str, ...]] = (
        "run_id",
        "iteration",
        "stage",
        "config_hash",
        "models",
        "metrics",
        "shards",
        "counts",
        "engine",
        "shard_seconds",
        "written_at",
        "resolved",
    )

    run_id: str
    iteration: int
    stage: str
    config_hash: str
    shards: int
    shard_seconds: float
    written_at: float
    resolved: dict[str, Any] = Field(
        default_factory=dict,
        description="The shards' resolved settings when they all agree; {'mixed': [...]} when a resumed "
        "stage's shards were computed on machines that resolved differently.",
    )
