"""The preference trainer: TRL's ``DPOTrainer`` whose loss is one of the five objectives (docs/objectives.md).

:class:`PreferenceTrainer` is a ``trl.DPOTrainer`` that keeps TRL's machinery (model and PEFT set-up, the
frozen reference or the adapter-disabled one, DeepSpeed/FSDP preparation, the fused LM head that never
materialises full logits, logging) but replaces the loss entirely: TRL 1.x folded the old
``concatenated_forward``/``dpo_loss`` hooks into one private ``_compute_loss``, its ``ipo`` divides by the
completion length (the objectives use sequence sums) and it has neither Sr-DPO nor IOPO. The loss math lives
in ``shared.losses``; this module only produces per-sequence log-prob sums and calls it.

Every example is a fixed list of S (prompt, response) sequences; a batch of B examples becomes S*B rows in
sequence-major order (row ``s * B + b``), so one forward gives all of them and ``view(S, B)`` recovers them:

- dpo, ipo: ``(x, y_w), (x, y_l)``;
- sr_dpo, sr_ipo: the same two, then ``(p+x, y_w), (p+x, y_l)`` with the Sr prompt ``p`` prepended to the
  user turn. These two only feed Delta: the policy and the reference score them under ``no_grad`` (two extra
  forwards, no extra backward) and they are collated as separate tensors so that the trained forward is not
  padded to their longer length;
- iopo: ``(x1, y1), (x1, y2), (x2, y1), (x2, y2)`` -- r11, r12, r21, r22 -- all four trained.

Reference log-probs come from the frozen reference model, or with LoRA from the same model with its
adapter disabled, or, with ``precompute_ref_log_probs``, from a ``ref_logps`` column holding all S values of
an example in the order above (TRL's own precompute assumes two rows per example and would misalign
IOPO's four).

Multi-GPU runs go through ``accelerate launch -m workers.training.launch --role actor --job JOB.json``: every
process runs :func:`train_actor`, whose :func:`distributed_settings` put the DeepSpeed ZeRO-3 or FSDP settings
into the training arguments. On CPU it runs in one process with ``distributed='none'``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from torch import Tensor
from torch.utils.data import DataLoader
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from shared import losses
from shared.config import SR_PROMPT_DEFAULT

from .arguments import CHECKPOINTING
from .preference_config import PreferenceConfig
from .preference_data import SEQUENCES, PreferenceCollator, encode_record, num_trained, validate_records

logger = logging.getLogger(__name__)


@dataclass
class BatchLogps:
    """Per-sequence summed log-probs of a batch, each [S_part, B] in the order of :data:`SEQUENCES`.

    ``policy`` carries gradients; ``policy_p`` (Sr-prompted rows) was computed under ``no_grad``.
    ``counts`` holds the response token counts of the trained rows (for the per-token SFT NLL).
    """

    policy: Tensor
    ref: Tensor
    counts: Tensor
    policy_p: Tensor | None = None
    ref_p: Tensor | None = None


class PreferenceTrainer(DPOTrainer):
    """A ``trl.DPOTrainer`` whose loss is one of dpo, ipo, sr_dpo, sr_ipo, iopo from ``shared.losses``.

    Pass a :class:`PreferenceConfig` as ``args`` and a dataset of raw records (pairs or IOPO groups): this
    class tokenises them itself (:meth:`_prepare_dataset`), collates them with :class:`PreferenceCollator`
    unless told otherwise, and computes the loss in :meth:`compute_loss`. Everything else -- the reference
    model (``ref_model``, or TRL loading a copy of ``model``, or the adapter-disabled model with PEFT),
    PEFT wrapping, distributed preparation -- is TRL's.
    """

    args: PreferenceConfig

    def __init__(
        self, model: Any, ref_model: Any = None, args: PreferenceConfig | None = None, **kwargs: Any
    ):
        if not isinstance(args, PreferenceConfig):
            raise TypeError("PreferenceTrainer needs a PreferenceConfig as args")
        # Read by the overridden dataset preparation and precompute, which DPOTrainer.__init__ calls.
        self.objective = args.objective
        self.num_trained = num_trained(args.objective)
        self.num_sequences = len(SEQUENCES[args.objective])
        self.dropped_examples = 0
        if kwargs.get("data_collator") is None:
            tokenizer = kwargs.get("processing_class")
            if tokenizer is None:
                raise ValueError("PreferenceTrainer needs processing_class (the tokenizer)")
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            kwargs["data_collator"] = PreferenceCollator(pad_id, self.num_trained, args.max_length)
        super().__init__(model, ref_model=ref_model, args=args, **kwargs)
        if args.precompute_ref_log_probs and ref_model is not None:
            # Every reference value now sits in the dataset; the reference model need not stay in memory.
            self.ref_model = None

    # -- data --

    def _prepare_dataset(
        self, dataset: Dataset | IterableDataset, processing_class: Any, args: DPOConfig, dataset_name: str
    ) -> Dataset:
        """Tokenise raw records into S (prompt ids, response ids) sequences; drop over-long prompts."""
        if isinstance(dataset, IterableDataset):
            raise TypeError("PreferenceTrainer needs a map-style datasets.Dataset")
        if "seq_prompt_ids" in dataset.column_names:  # already prepared (e.g. passed again to evaluate)
            return dataset
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        sr_prompt = getattr(args, "sr_prompt", SR_PROMPT_DEFAULT)
        rows, dropped = [], 0
        for record in validate_records(list(dataset), self.objective):
            row = encode_record(tokenizer, record, self.objective, sr_prompt)
            # As TRL: a prompt that fills max_length would leave no response token to learn from.
            if args.max_length is not None and any(len(p) >= args.max_length for p in row["seq_prompt_ids"]):
                dropped += 1
                continue
            rows.append(row)
        if dropped:
            logger.warning("%s: dropped %d example(s) whose prompt fills max_length", dataset_name, dropped)
        self.dropped_examples += dropped
        if not rows:
            raise ValueError(
                f"{dataset_name}: no example left after truncation to max_length={args.max_length}"
            )
        return Dataset.from_list(rows)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["seq_prompt_ids", "seq_completion_ids", "ref_logps"]

    # -- log-probs --

    def sequence_logps(
        self, model: Any, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(summed log-prob of the response tokens, their count) per row, via TRL's fused LM head.

        The fused head projects hidden states to the vocabulary in tiles and returns only the label
        log-probs (zero off the response), so the [rows, T, V] logits of a large vocabulary never exist.
        """
        labels = input_ids.masked_fill(completion_mask == 0, -100)
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            fused_lm_head=True,
            use_cache=False,
        )
        shift_mask = completion_mask[:, 1:]
        per_token = out.log_probs[:, -shift_mask.size(1) :].float()  # prompt-tuning PEFT prepends tokens
        return per_token.sum(-1), shift_mask.sum(-1)

    def _no_checkpointing(self) -> contextlib.AbstractContextManager[Any]:
        """Activation checkpointing off for a forward without gradient (it would only recompute, or warn)."""
        if not getattr(self.args, CHECKPOINTING):
            return contextlib.nullcontext()
        return disable_gradient_checkpointing(self.model, getattr(self.args, f"{CHECKPOINTING}_kwargs"))

    @contextlib.contextmanager
    def _reference_model(self, model: Any = None) -> Iterator[Any]:
        """The model that scores the reference: ``model`` if given, the frozen ``ref_model``, or with PEFT the
        policy with its adapter disabled (or its frozen initial copy "ref", as TRL names it)."""
        if model is not None:
            yield model
        elif self.ref_model is not None:
            yield self.ref_model
        elif is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                yield self.model
        else:
            raise RuntimeError(
                "no reference model: pass ref_model, use PEFT, or precompute reference log-probs"
            )

    def reference_logps(self, inputs: dict[str, Tensor], model: Any = None) -> tuple[Tensor, Tensor | None]:
        """Reference sums of the trained rows [G, B] and of the Sr rows [2, B] (or None), without gradient."""
        batch = inputs["input_ids"].size(0) // self.num_trained
        with (
            torch.no_grad(),
            self._no_checkpointing(),
            self._reference_model(model) as ref,
            # the reference in the policy's precision: bfloat16 autocast under mixed precision (a no-op
            # otherwise), so that both log-ratios of a margin are computed alike
            self.accelerator.autocast(),
        ):
            ref_main, _ = self.sequence_logps(
                ref, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
            )
            ref_p = None
            if "sr_input_ids" in inputs:
                ref_p, _ = self.sequence_logps(
                    ref, inputs["sr_input_ids"], inputs["sr_attention_mask"], inputs["sr_completion_mask"]
                )
                ref_p = ref_p.view(-1, batch)
        return ref_main.view(self.num_trained, batch), ref_p

    def batch_logps(self, model: Any, inputs: dict[str, Tensor]) -> BatchLogps:
        """Everything the objective needs for one batch: one trained forward, the rest without gradient."""
        batch = inputs["input_ids"].size(0) // self.num_trained
        policy, counts = self.sequence_logps(
            model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        )
        policy, counts = policy.view(self.num_trained, batch), counts.view(self.num_trained, batch)
        policy_p = None
        if "sr_input_ids" in inputs:
            # Delta uses the CURRENT policy under stop-gradient: no graph is built for these rows.
            with torch.no_grad(), self._no_checkpointing():
                policy_p, _ = self.sequence_logps(
                    model, inputs["sr_input_ids"], inputs["sr_attention_mask"], inputs["sr_completion_mask"]
                )
            policy_p = policy_p.view(-1, batch)
        if "ref_logps" in inputs:
            ref_all = inputs["ref_logps"].to(policy.device, policy.dtype).T  # [S, B]
            ref, ref_p = ref_all[: self.num_trained], ref_all[self.num_trained :]
            ref_p = ref_p if ref_p.numel() else None
        else:
            ref, ref_p = self.reference_logps(inputs)
        return BatchLogps(policy=policy, ref=ref, counts=counts, policy_p=policy_p, ref_p=ref_p)

    # -- loss --

    def objective_losses(self, lp: BatchLogps) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(per-example preference loss [B], per-example SFT NLL [B], detached metric tensors [B])."""
        args = self.args
        beta = args.beta
        r = lp.policy - lp.ref  # implicit rewards / beta, [G, B]
        nll = -lp.policy / lp.counts.clamp(min=1)  # per-token NLL of each trained sequence
        extra: dict[str, Tensor] = {}
        if self.objective == "iopo":
            per_item = losses.iopo_loss(*lp.policy, *lp.ref, beta=beta)
            sft = nll[0] + nll[3]  # y1|x1 and y2|x2
            chosen_r, rejected_r = r[0] + r[3], r[1] + r[2]
            chosen_logps, rejected_logps = (
                (lp.policy[0] + lp.policy[3]) / 2,
                (lp.policy[1] + lp.policy[2]) / 2,
            )
        else:
            pc, pr, rc, rr = lp.policy[0], lp.policy[1], lp.ref[0], lp.ref[1]
            if self.objective == "dpo":
                per_item = losses.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=args.label_smoothing)
            elif self.objective == "ipo":
                per_item = losses.ipo_loss(pc, pr, rc, rr, beta=beta)
            else:
                if lp.policy_p is None or lp.ref_p is None:
                    raise RuntimeError(f"{self.objective} needs the Sr-prompted sequences in the batch")
                sr_args = (pc, pr, rc, rr, lp.policy_p[0], lp.policy_p[1], lp.ref_p[0], lp.ref_p[1])
                loss_fn = losses.sr_dpo_loss if self.objective == "sr_dpo" else losses.sr_ipo_loss
                per_item = loss_fn(*sr_args, beta=beta, lam=args.lam)
                extra["sr/delta"] = sr_delta(*sr_args[4:], beta=beta)
            sft = nll[0]
            chosen_r, rejected_r = r[0], r[1]
            chosen_logps, rejected_logps = pc, pr
        metrics = {
            "rewards/chosen": beta * chosen_r,
            "rewards/rejected": beta * rejected_r,
            "rewards/margins": beta * (chosen_r - rejected_r),
            "rewards/accuracies": (chosen_r > rejected_r).float(),
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
            "nll/chosen": sft,
            **extra,
        }
        return per_item, sft, {k: v.detach() for k, v in metrics.items()}

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Mean objective over the batch + ``sft_weight`` x mean per-token NLL of the chosen response(s)."""
        mode = "train" if self.model.training else "eval"
        # Every forward of the batch (policy, reference, Sr rows) in the run's precision: bfloat16
        # autocast under mixed precision (a no-op otherwise), whether or not the model was prepared
        # yet, so that both sides of each log-ratio are computed alike.
        with self.accelerator.autocast():
            lp = self.batch_logps(model, inputs)
        per_item, sft, metrics = self.objective_losses(lp)
        preference = per_item.mean()
        loss = preference + self.args.sft_weight * sft.mean() if self.args.sft_weight else preference
        metrics["loss/preference"] = preference.detach().reshape(1)
        for key, value in metrics.items():
            self._metrics[mode][key].append(self.accelerator.gather_for_metrics(value).float().mean().item())
        return (loss, metrics) if return_outputs else loss

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor, None, None]:
        """Evaluation computes the loss only (there are no logits to return: the LM head is fused)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- precomputed reference --

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """Add a ``ref_logps`` column: all S reference sums of each example, in :data:`SEQUENCES` order.

        Called by ``DPOTrainer.__init__`` before any training step, so a policy without a separate
        reference (full fine-tuning) still holds the starting checkpoint here.
        """
        if isinstance(dataset, IterableDataset):
            raise ValueError("precompute_ref_log_probs needs a map-style dataset")
        if "ref_logps" in dataset.column_names:
            return dataset
        loader = self.accelerator.prepare(
            DataLoader(
                dataset,
                batch_size=batch_size,
                collate_fn=self.data_collator,
                shuffle=False,
                num_workers=self.args.dataloader_num_workers,
            )
        )
        model = None
        if self.ref_model is None and not is_peft_model(self.model):
            if self.is_deepspeed_enabled:  # parameters are still sharded / on CPU before train(): wrap them
                from trl.models import prepare_deepspeed

                if self._precompute_engine is None:
                    self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
                model = self._precompute_engine
            else:
                model = self.model
        values = []
        for batch in loader:
            with self.accelerator.autocast():
                ref, ref_p = self.reference_logps(batch, model=model)
            rows = ref if ref_p is None else torch.cat([ref, ref_p])  # [S, B]
            values.append(self.accelerator.gather_for_metrics(rows.T.contiguous()).float().cpu())
        table = torch.cat(values)
        if table.shape != (len(dataset), self.num_sequences):
            raise RuntimeError(
                f"precomputed {tuple(table.shape)} reference values for {len(dataset)} examples"
            )
        return dataset.add_column("ref_logps", table.tolist())


def sr_delta(
    policy_chosen_p: Tensor,
    policy_rejected_p: Tensor,
    ref_chosen_p: Tensor,
    ref_rejected_p: Tensor,
    beta: float,
) -> Tensor:
    """Delta of Sr-DPO/Sr-IPO for logging: beta [r(p+x, y_w) - r(p+x, y_l)], detached."""
    return (beta * ((policy_chosen_p - ref_chosen_p) - (policy_rejected_p - ref_rejected_p))).detach()


# --- scoring outside training -----------------------------------------------------------------


@torch.no_grad()
def score_records(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    objective: str,
    sr_prompt: str = SR_PROMPT_DEFAULT,
    max_length: int | None = None,
    batch_size: int = 8,
) -> Tensor:
    """Summed response log-probs [N, S] of each record's sequences (order: :data:`SEQUENCES`) under ``model``.

    Tokenises exactly as training does but scores with plain logits and ``shared.losses.sequence_logps``,
    so it also serves as an independent check of the fused head; for evaluating margins before/after.
    """
    rows = [encode_record(tokenizer, r, objective, sr_prompt) for r in validate_records(records, objective)]
    width = len(SEQUENCES[objective])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = PreferenceCollator(pad_id, trained=width, max_length=max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk).items()}
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        sums, _ = losses.sequence_logps(logits, labels)
        out.append(sums.view(width, len(chunk)).T.cpu())
    model.train(was_training)
    return torch.cat(out)


def preference_margins(scores: Tensor, objective: str) -> Tensor:
    """Per-example policy margin logp(y_w) - logp(y_l); iopo: the group margin (l11 - l12) + (l22 - l21)."""
    if objective == "iopo":
        return (scores[:, 0] - scores[:, 1]) + (scores[:, 3] - scores[:, 2])
    return scores[:, 0] - scores[:, 1]
