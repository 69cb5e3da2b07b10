"""Evaluations the eval stage keeps: their keys, what each depends on, and taking them into a fork.

The eval stage scores, per model version, the actor on IFEval and on the validation split and the
refiner's judge accuracy on held-out pairs. Each such evaluation is kept as it ends
(``shared.runtime.partial``), keyed by its kind and the version number, so that a retry scores
only what is missing.

A fork (``services.fork``) that trains a new actor must evaluate it, but the versions it shares
with its source (v0, and a refiner whose training it reused) were evaluated there already. Such an
evaluation is the same computation when the model is the same files and the settings that
evaluation reads are equal: :func:`evaluation_settings` names them per kind (not the whole eval
stage hash, which also covers the judge's backend and the other kinds' settings).
``shared.runtime.fork_evaluations`` writes those evaluations into the fork's eval stage as kept
items, and the stage scores the rest.
"""

from __future__ import annotations

from typing import Any

from shared.config import RunConfig, settings_hash

ROLE_OF_KIND = {"ifeval": "actor", "validation": "actor", "judge": "refiner"}
"""An eval row's ``kind`` -> the role whose version it scores (the metrics list has the same name)."""


INPUT_OF_KIND = {"judge": "evaluation.judge_data", "validation": "evaluation.validation_prompts"}
"""The data file an evaluation kind reads (``shared.runtime.data_inputs``); IFEval's is built in."""


def kept_key(kind: str, version: str) -> str:
    """The key of one kept evaluation: ``ifeval:v1``, ``judge:v0`` (one run, one eval stage hash)."""
    return f"{kind}:{version}"


def evaluation_settings(config: RunConfig, kind: str) -> str:
    """Hash of every setting that evaluation ``kind`` of a given model version depends on."""
    e = config.evaluation
    parts: dict[str, Any] = {"kind": kind, "seed": config.seed}
    if kind in ("ifeval", "validation"):
        parts |= {
            "actor": config.hashed_settings("actor"),
            "max_new_tokens": e.max_new_tokens,
            "items": e.ifeval_limit if kind == "ifeval" else e.validation_prompts,
        }
    elif kind == "judge":
        j = config.judge
        parts |= {
            "refiner": config.hashed_settings("refiner"),
            "votes": j.votes,
            "temperature": j.temperature,
            "top_p": j.top_p,
            "max_new_tokens": j.max_new_tokens,
            "judge_data": e.judge_data,
            "judge_limit": e.judge_limit,
        }
    else:
        raise ValueError(f"unknown evaluation kind {kind!r}; kinds are {sorted(ROLE_OF_KIND)}")
    return settings_hash(parts)
