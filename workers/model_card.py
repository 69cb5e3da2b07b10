"""The model card (``README.md``) of a published version, in Hugging Face's format.

A version folder is meant to be usable on its own: uploaded to a hub, handed to a colleague, loaded
months later. ``spar_version.json`` holds the facts for programs; the card says the same for people
(what the model was trained from, on what, how, with which result) plus how to load it. It is written
into the staging folder before the version is published, so a version never exists without its card,
and rewritten when the eval stage has scored the version (the only part known later).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.config import RunConfig
from shared.records import VersionMetadata
from shared.runtime.artifacts import RunPaths, write_atomic

CARD = "README.md"

OBJECTIVES = {
    "dpo": "DPO (direct preference optimisation) on SPaR's refined pairs",
    "ipo": "IPO (identity preference optimisation) on SPaR's refined pairs",
    "sr_dpo": "Sr-DPO (DPO with a self-reflective prompt term)",
    "sr_ipo": "Sr-IPO (IPO with a self-reflective prompt term)",
    "iopo": "IOPO (input-output preference optimisation) on IOPO groups",
    "rft": "RFT: supervised fine-tuning on the refiner's refinement and judgment mix",
    "sft": "SFT initialisation on a given dataset",
}


def _value(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _loss_summary(metrics: dict[str, Any]) -> list[str]:
    curve = [float(x) for x in metrics.get("loss_curve") or []]
    lines = []
    if curve:
        lines.append(
            f"- {len(curve)} logged steps: loss {curve[0]:.4f} at the first, {curve[-1]:.4f} at the last "
            f"(lowest {min(curve):.4f})"
        )
    for key, label in (
        ("margin_start", "preference margin at the start"),
        ("margin_end", "preference margin at the end"),
        ("target_nll_before", "target NLL before training (probe)"),
        ("target_nll_after", "target NLL after training (probe)"),
        ("precision", "precision"),
        ("seconds", "training wall time (s)"),
    ):
        if metrics.get(key) is not None:
            value = metrics[key]
            lines.append(f"- {label}: {value:.4f}" if isinstance(value, float) else f"- {label}: {value}")
    return lines or ["- not trained (see above)"]


def _evaluation(scores: list[dict[str, Any]]) -> list[str]:
    if not scores:
        return ["Not evaluated yet: run the `eval` stage (its scores are added here when it runs)."]
    lines = ["| benchmark | metric | value |", "|---|---|---|"]
    for row in scores:
        for key, value in row.items():
            if key not in ("kind", "version") and isinstance(value, int | float):
                lines.append(f"| {row['kind']} | {key} | {value:.4g} |")
    return lines


def render_card(
    meta: VersionMetadata,
    *,
    run_id: str,
    iteration: int | None,
    config_hash: str,
    base_model: str,
    folder: Path,
    evaluation: list[dict[str, Any]] | None = None,
) -> str:
    """The card's Markdown. ``base_model``: the configured model the run started from (a folder or a
    built-in name); ``evaluation``: the eval stage's rows of this version (``kind`` ifeval, validation
    or judge, plus its scores)."""
    objective = meta.objective or "sft"
    library = "peft" if meta.adapter else "transformers"
    front = [
        "---",
        f"library_name: {library}",
        "license: other",
        "license_name: inherits-base-model",
        "tags:",
        "- spar",
        "- trl",
        f"- {objective}",
        "---",
    ]
    where = f"iteration {iteration}" if iteration is not None else "stage 0 (initialisation)"
    lines = [
        f"# {run_id}: {meta.role} {meta.version}",
        "",
        f"The {meta.role} model of a [SPaR](https://arxiv.org/abs/2412.11605) self-play run, trained by "
        f"spar in {where}.",
        "",
        "## Model",
        "",
        f"- base model (the run's configured {meta.role}): `{base_model}`",
        f"- parent version (the starting point and the frozen reference): `{meta.parent}`",
        f"- training objective: {OBJECTIVES.get(objective, objective)}",
        f"- weights: {'a LoRA adapter on `' + str(meta.base_model) + '`' if meta.adapter else 'full model'}",
        f"- spar stage config hash: `{config_hash}`",
        f"- created: {meta.created_at}",
    ]
    if meta.alias_of is not None:
        lines.append(f"- **no training**: the same weights as {meta.alias_of} ({meta.reason})")
    lines += [
        "",
        "## Data",
        "",
        f"- {meta.data.records} training records ("
        + ("preference pairs or groups" if meta.role == "actor" and objective != "sft" else "SFT examples")
        + ")",
        f"- file: `{Path(meta.data.file).name}`, sha256 `{meta.data.sha256}`",
        "",
        "## Training hyper-parameters",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_value(v)} |" for k, v in sorted(meta.hyperparameters.items()) if v is not None]
    lines += ["", "## Training losses", "", *_loss_summary(meta.metrics), ""]
    lines += ["## Evaluation", "", *_evaluation(evaluation or []), ""]
    if meta.adapter:
        load = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{meta.base_model}")',
            f'model = PeftModel.from_pretrained(base, "{folder}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{meta.base_model}")',
        ]
    elif meta.alias_of is not None:
        load = [f"# this version has no weights of its own: load {meta.alias_of} of the same run"]
    else:
        load = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{folder}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{folder}")',
        ]
    lines += ["## How to load it", "", "```python", *load, "```", ""]
    lines += [
        "## License",
        "",
        "This model inherits the base model's license (and any terms of the data it was trained on).",
        "",
    ]
    return "\n".join(front + lines)


def write_card(
    folder: Path,
    meta: VersionMetadata,
    *,
    run_id: str,
    iteration: int | None,
    config_hash: str,
    base_model: str,
    published: Path | None = None,
    evaluation: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``folder/README.md`` atomically. ``published``: the folder's final name, when ``folder``
    is the staging folder that will be renamed to it (the card's loading code names the final one)."""
    text = render_card(
        meta,
        run_id=run_id,
        iteration=iteration,
        config_hash=config_hash,
        base_model=base_model,
        folder=published or folder,
        evaluation=evaluation,
    )
    write_atomic(folder / CARD, text)
    return folder / CARD


def card_for_version(
    paths: RunPaths,
    config: RunConfig,
    role: str,
    version: int,
    folder: Path | None = None,
    evaluation: list[dict[str, Any]] | None = None,
) -> Path | None:
    """Write the card of ``role`` v<version> of a run from its metadata (None: the version has no
    folder, e.g. v0 as configured). ``folder``: the staging folder while it is being published."""
    from shared.runtime.versions import read_metadata, version_dir

    target = version_dir(paths, role, version)
    meta = read_metadata(folder or target)
    if meta is None:
        return None
    stage = f"train_{role}" if version > 0 else "init"
    return write_card(
        folder or target,
        meta,
        run_id=paths.run_id,
        iteration=version - 1 if version > 0 else None,
        config_hash=config.stage_hash(stage),
        base_model=getattr(config, role).model,
        published=target,
        evaluation=evaluation,
    )
