"""The model card of a version (workers/model_card.py), on metadata alone: no training needed."""

from __future__ import annotations

from pathlib import Path

from shared.records import VersionMetadata
from workers.model_card import write_card


def _meta(**extra) -> VersionMetadata:
    return VersionMetadata.model_validate(
        {
            "role": "refiner",
            "version": "v0",
            "parent": "v0 (tiny)",
            "objective": "sft",
            "data": {"file": "/data/init/refiner.jsonl", "sha256": "ab" * 32, "records": 7},
            "hyperparameters": {"learning_rate": 2e-6, "lora": {"r": 8}, "max_steps": None},
            "metrics": {"loss_curve": [2.0, 1.5, 1.75], "target_nll_before": 3.0, "target_nll_after": 2.5},
            "created_at": "2025-01-01T00:00:00+00:00",
        }
        | extra
    )


def test_a_lora_init_card_says_how_to_load_the_adapter(tmp_path: Path) -> None:
    meta = _meta(adapter=True, base_model="/models/tiny")
    staging, final = tmp_path / ".v0.tmp", tmp_path / "v0"
    staging.mkdir()
    card = write_card(
        staging, meta, run_id="r1", iteration=None, config_hash="0123", base_model="tiny", published=final
    ).read_text()
    assert card.startswith("---\nlibrary_name: peft\nlicense: other\n")
    assert "trained by spar in stage 0 (initialisation)" in card
    assert "7 training records (SFT examples)" in card and "file: `refiner.jsonl`" in card
    assert '| lora | {"r": 8} |' in card and "max_steps" not in card  # unset settings left out
    assert "3 logged steps: loss 2.0000 at the first, 1.7500 at the last (lowest 1.5000)" in card
    assert "target NLL before training (probe): 3.0000" in card
    # the loading code names the published folder, never the staging one
    assert f'PeftModel.from_pretrained(base, "{final}")' in card and str(staging) not in card
    assert "Not evaluated yet" in card
    assert not list(tmp_path.glob(".v0.tmp/.*"))  # written atomically: no temporary file left
