"""The over-long policy and where its counts go: the shard's engine counts and the run summary."""

from __future__ import annotations

from collections.abc import Sequence

from shared.engine import EngineStats, GenerationRequest, MeteredEngine, fit_to_context


def _request(max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": "x"}], max_new_tokens=max_new_tokens)


def test_fit_to_context_policies() -> None:
    request = _request(100)
    assert fit_to_context(request, 400, 500, "skip") is request  # exactly fits
    assert fit_to_context(request, 400, None, "skip") is request  # no known limit
    assert fit_to_context(request, 401, 500, "skip") is None
    truncated = fit_to_context(request, 450, 500, "truncate")
    assert truncated is not None and truncated.max_new_tokens == 50 and truncated.messages == request.messages
    assert fit_to_context(request, 499, 500, "truncate").max_new_tokens == 1  # type: ignore[union-attr]
    assert fit_to_context(request, 500, 500, "truncate") is None  # the prompt alone fills it


class _CountingEngine:
    """Skips every request whose text is 'long' and counts it, like the real engines."""

    def __init__(self) -> None:
        self.stats = EngineStats()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        out = []
        for r in requests:
            skipped = r.messages[0]["content"] == "long"
            self.stats.overlong_skipped += skipped
            out.append([""] * r.n if skipped else ["ok"] * r.n)
        return out


def test_metered_engine_carries_the_overlong_counts() -> None:
    inner = _CountingEngine()
    inner.stats.overlong_skipped = 7  # counted before this shard: not part of its delta
    metered = MeteredEngine(inner)
    long = GenerationRequest(messages=[{"role": "user", "content": "long"}], n=2)
    metered.generate([long, _request(4), long])
    counts = metered.stats.as_dict()
    assert counts["overlong_skipped"] == 2 and counts["overlong_truncated"] == 0
    assert counts["completions"] == 5


def test_summary_shows_the_overlong_counts(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from rich.console import Console

    import services.summary as summary

    manifest = {
        "run_id": "r",
        "iteration": 0,
        "stage": "sample",
        "config_hash": "test",
        "written_at": 0.0,
        "counts": {"prompts": 3, "responses": 6},
        "engine": {"calls": 1, "generated_tokens": 40, "overlong_skipped": 2, "overlong_truncated": 1},
        "shards": 1,
        "shard_seconds": 1.5,
        "models": {},
    }

    class _Paths:
        def manifest(self, iteration: int, stage: str):  # noqa: ANN201
            path = tmp_path / f"{stage}.json"
            if stage == "sample":
                import json

                path.write_text(json.dumps(manifest))
            return path

    result = summary.iteration_summary(_Paths(), 0)  # type: ignore[arg-type]
    (row,) = result["stages"]
    assert (row["overlong_skipped"], row["overlong_truncated"]) == (2, 1)
    console = Console(width=140, record=True)
    console.print(summary.render(result))
    text = console.export_text()
    assert "over-long" in text and "2/1" in text
