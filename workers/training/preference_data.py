"""Preference data: pairs and IOPO groups as the fixed sequences each objective scores, and a collator.

The sequence order is :data:`SEQUENCES`; the objectives are in docs/objectives.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from shared.config import SR_PROMPT_DEFAULT
from workers.training import encode_prompt_response

logger = logging.getLogger(__name__)


PAIR_KEYS: tuple[str, ...] = ("prompt", "chosen", "rejected")
GROUP_KEYS: tuple[str, ...] = ("x1", "y1", "x2", "y2")
SR_OBJECTIVES = frozenset({"sr_dpo", "sr_ipo"})

# The sequences of one example, in the fixed order every tensor and the ``ref_logps`` column follow.
SEQUENCES: dict[str, tuple[str, ...]] = {
    "dpo": ("chosen", "rejected"),
    "ipo": ("chosen", "rejected"),
    "sr_dpo": ("chosen", "rejected", "chosen_p", "rejected_p"),
    "sr_ipo": ("chosen", "rejected", "chosen_p", "rejected_p"),
    "iopo": ("11", "12", "21", "22"),
}


def num_trained(objective: str) -> int:
    """How many of an example's leading sequences get gradients (the Sr ones only feed Delta)."""
    return 4 if objective == "iopo" else 2


# --- data -------------------------------------------------------------------------------------


def encode_record(
    tokenizer: Any, record: dict[str, str], objective: str, sr_prompt: str = SR_PROMPT_DEFAULT
) -> dict[str, list[list[int]]]:
    """Token ids of an example's S sequences (order: :data:`SEQUENCES`), prompt and response apart.

    A pair is ``{"prompt", "chosen", "rejected"}`` with the prompt as the user message; an IOPO group is
    ``{"x1", "y1", "x2", "y2"}``. Each is rendered with the model's chat template and no system prompt.
    """
    if objective == "iopo":
        turns = [
            (record["x1"], record["y1"]),
            (record["x1"], record["y2"]),
            (record["x2"], record["y1"]),
            (record["x2"], record["y2"]),
        ]
    else:
        turns = [(record["prompt"], record["chosen"]), (record["prompt"], record["rejected"])]
        if objective in SR_OBJECTIVES:
            sr_user = sr_prompt + record["prompt"]
            turns += [(sr_user, record["chosen"]), (sr_user, record["rejected"])]
    prompts, responses = zip(*(encode_prompt_response(tokenizer, x, y) for x, y in turns), strict=True)
    return {"seq_prompt_ids": list(prompts), "seq_completion_ids": list(responses)}


def validate_records(records: Sequence[dict[str, Any]], objective: str) -> list[dict[str, str]]:
    """The records reduced to the keys the objective needs; a clear error for a wrong shape."""
    keys = GROUP_KEYS if objective == "iopo" else PAIR_KEYS
    if not records:
        raise ValueError("no training records")
    out = []
    for i, record in enumerate(records):
        missing = [k for k in keys if not isinstance(record.get(k), str)]
        if missing:
            kind = "IOPO groups" if objective == "iopo" else "preference pairs"
            raise ValueError(
                f"record {i} lacks string field(s) {missing}: {objective} trains on {kind} {keys}"
            )
        out.append({k: record[k] for k in keys})
    return out


@dataclass
class PreferenceCollator:
    """Pads an example's S sequences into sequence-major rows; the first ``trained`` rows are trained.

    Output: ``input_ids``/``attention_mask``/``completion_mask`` for the trained rows, ``sr_*`` for the rest
    (Sr-prompted rows, scored without gradient), and ``ref_logps`` [B, S] when the dataset carries it.
    Sequences are cut to ``max_length`` keeping the start, as TRL does; right padding.
    """

    pad_token_id: int
    trained: int
    max_length: int | None = None

    def _rows(self, examples: list[dict[str, Any]], seqs: range) -> dict[str, Tensor]:
        ids_rows, completion_rows = [], []
        for s in seqs:
            for ex in examples:
                prompt, completion = ex["seq_prompt_ids"][s], ex["seq_completion_ids"][s]
                ids = (list(prompt) + list(completion))[: self.max_length]
                mask = ([0] * len(prompt) + [1] * len(completion))[: self.max_length]
                ids_rows.append(ids)
                completion_rows.append(mask)
        width = max(len(r) for r in ids_rows)
        input_ids = torch.full((len(ids_rows), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(ids_rows), width), dtype=torch.long)
        completion = torch.zeros((len(ids_rows), width), dtype=torch.long)
        for row, (ids, mask) in enumerate(zip(ids_rows, completion_rows, strict=True)):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
            completion[row, : len(mask)] = torch.tensor(mask, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        total = len(examples[0]["seq_prompt_ids"])
        batch = self._rows(examples, range(self.trained))
        if total > self.trained:
            batch |= {f"sr_{k}": v for k, v in self._rows(examples, range(self.trained, total)).items()}
        if "ref_logps" in examples[0]:
            batch["ref_logps"] = torch.tensor([ex["ref_logps"] for ex in examples], dtype=torch.float32)
        return batch
