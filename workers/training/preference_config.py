"""The preference trainer's configuration: TRL's ``DPOConfig`` plus the objective and its parameters."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import DPOConfig

from shared import losses
from shared.config import SR_PROMPT_DEFAULT

logger = logging.getLogger(__name__)


@dataclass
class PreferenceConfig(DPOConfig):
    """``DPOConfig`` plus the objective and its parameters (``beta``, ``label_smoothing`` are DPOConfig's)."""

    objective: str = field(
        default="dpo", metadata={"help": "One of dpo, ipo, sr_dpo, sr_ipo, iopo (see docs/objectives.md)."}
    )
    sft_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the per-token NLL of the chosen response (iopo: of y1|x1 and y2|x2)."},
    )
    lam: float = field(default=0.5, metadata={"help": "Sr-DPO / Sr-IPO lambda (weight of Delta)."})
    sr_prompt: str = field(
        default=SR_PROMPT_DEFAULT, metadata={"help": "The prompt p prepended to x (Sr-*)."}
    )

    def __post_init__(self) -> None:
        if self.objective not in losses.OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; expected one of {losses.OBJECTIVES}")
        if self.label_smoothing and self.objective != "dpo":
            raise ValueError("label_smoothing applies to the dpo objective only")
        super().__post_init__()
