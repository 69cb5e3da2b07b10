"""Stage 5 (refiner): rejection-sampling fine-tuning (RFT) on the refinement and judgment mix, with TRL.

Examples are chats (``{"messages": [...]}``): a judgment example is one user turn (the judge prompt) and
the kept judgment; a refinement example is the judge prompt, the parent's judgment, the refine instruction
and the successful refiner output. The loss covers assistant turns only.

TRL 1.16's ``assistant_only_loss=True`` needs a chat template with ``{% generation %}`` markers and only
patches them into a fixed list of known templates: on the tiny model's ChatML template (and SmolLM2's) it
raises. So the examples are tokenised here with :func:`workers.training.encode_chat`, which finds the
assistant spans of any template by rendering prefixes, and handed to ``SFTTrainer`` as an already processed
dataset (``input_ids`` and ``labels`` with -100 off the assistant turns); TRL then only truncates to
``max_length``, drops fully masked rows and pads.

By default every assistant turn is trained, as the reference recipe's multi-turn SFT does (LLaMA-Factory
without ``mask_history``): in a refinement example that includes the parent's judgment, itself a majority
judgment of the refiner. ``assistant_turns="last"`` trains the final target only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from shared.config import SftConfig
from shared.losses import sequence_logps
from workers.training import encode_chat

from .arguments import common_training_kwargs, ensure_deepspeed_comm, lora_config, model_dtype
from .outcome import common_metrics, save_outcome, timed_train
from .progress import StepHook, attach

logger = logging.getLogger(__name__)

AssistantTurns = Literal["all", "last"]


def encode_example(
    tokenizer: Any, messages: list[dict[str, str]], assistant_turns: AssistantTurns = "all"
) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` of one chat: labels are the ids on assistant tokens, -100 elsewhere."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("an RFT example must end with the assistant turn to learn")
    ids, mask = encode_chat(tokenizer, messages)
    if assistant_turns == "last":
        # Keep only the last contiguous run of assistant tokens.
        last = len(mask) - mask[::-1].index(1)
        first = last
        while first > 0 and mask[first - 1] == 1:
            first -= 1
        mask = [1 if first <= i < last else 0 for i in range(len(mask))]
    return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask, strict=True)]}


def _messages(example: dict[str, Any], index: int) -> list[dict[str, str]]:
    messages = example.get("messages") if isinstance(example, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"example {index} has no 'messages' list")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


@torch.no_grad()
def mean_target_nll(
    model: Any,
    rows: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    max_length: int | None = None,
    batch_size: int = 8,
) -> float:
    """Token-weighted mean NLL of the labelled (assistant) tokens of ``rows`` under ``model``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r["input_ids"][:max_length]) for r in chunk)
        ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            seq, lab = r["input_ids"][:max_length], r["labels"][:max_length]
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, : len(lab)] = torch.tensor(lab)
            attention[i, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
        sums, n = sequence_logps(logits, labels.to(device))
        total += float(-sums.sum())
        count += int(n.sum())
    model.train(was_training)
    return total / count if count else math.nan


def train_refiner(
    model_path: Path,
    examples: list[dict[str, Any]],
    cfg: SftConfig,
    out_dir: Path,
    seed: int = 0,
    assistant_turns: AssistantTurns = "all",
    on_step: StepHook | None = None,
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune the refiner on RFT chats (loss on assistant turns) and save model + tokenizer to ``out_dir``.

    Returns the per-step loss curve, the mean NLL of the assistant targets before and after training (on
    the training examples), wall seconds, peak RSS and steps. LoRA saves the adapter and records its base.
    With ``checkpoint_dir``, step checkpoints are saved there and a retried job resumes from the last one.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_path, out_dir = Path(model_path), Path(out_dir)
    if not examples:
        raise ValueError("no RFT examples")
    strategy, kwargs = common_training_kwargs(cfg, out_dir, seed, checkpoint_dir)
    args = SFTConfig(
        # Labels are built here; TRL must neither rebuild them nor look for generation markers.
        assistant_only_loss=False,
        completion_only_loss=False,
        packing=False,
        padding_free=False,
        **kwargs,
    )
    ensure_deepspeed_comm(strategy)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = [encode_example(tokenizer, _messages(ex, i), assistant_turns) for i, ex in enumerate(examples)]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=model_dtype(cfg))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Under ZeRO-3/FSDP the parameters are sharded across processes: the NLL check is a one-process affair.
    single = strategy == "none"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # The before/after NLL is measured on a fixed probe of the first examples (cfg.nll_probe): a full
    # pass over a large RFT mix would cost more than a short training run itself on CPU.
    probe = rows[: cfg.nll_probe] if single else []
    # None when not measured (nll_probe 0, or sharded training): NaN is not JSON
    nll_before = mean_target_nll(model.to(device), probe, pad_id, cfg.max_length) if probe else None
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora) if cfg.lora else None,
    )
    attach(trainer, "refiner", on_step)
    result, train_seconds = timed_train(trainer, checkpoint_dir, cfg.save_minutes)
    nll_after = mean_target_nll(trainer.model, probe, pad_id, cfg.max_length) if probe else None
    trainer.save_model(str(out_dir))
    metrics: dict[str, Any] = {
        "role": "refiner",
        "examples": len(rows),
        "assistant_turns": assistant_turns,
        **common_metrics(trainer, result, train_seconds, cfg, strategy, model_path),
        "target_nll_before": nll_before,
        "target_nll_after": nll_after,
    }
    save_outcome(trainer, tokenizer, out_dir, metrics)
    return metrics
