"""The Hugging Face transformers engine: batched chat generation on CPU or a single GPU.

It implements :class:`shared.engine.Engine` with the same meaning as the vLLM adapter, so the core
algorithm cannot tell them apart except by speed:

* each request is rendered with the tokenizer's chat template (generation prompt added) and its
  ``n`` completions are generated as ``n`` rows of the batch, not as ``n`` separate calls;
* ``stop`` strings end a completion and are cut from its text (vLLM's default), and only the new
  tokens are decoded, special tokens skipped;
* ``temperature == 0`` means greedy decoding; no top-k is applied (vLLM's default), only top-p.

Rows are grouped by sampling settings (one ``model.generate`` call has one generation config),
sorted by prompt length within a group to limit left padding, and run ``batch_size`` rows at a time.
A request whose prompt plus ``max_new_tokens`` exceeds the model's max positions is skipped or
truncated (``overlong``), as in the vLLM engine, and counted in ``stats``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from shared.config import HFEngineConfig
from shared.engine import EngineStats, GenerationRequest, fit_to_context
from workers.engines.startup import check_model_folder

log = logging.getLogger("spar.engines")

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

ProgressCallback = Callable[[int, int], None]

_DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}

# (temperature, top_p, max_new_tokens, stop): what one generate() call must share.
_SamplingKey = tuple[float, float, int, tuple[str, ...]]


@dataclass(frozen=True)
class _Row:
    """One completion to produce: copy ``copy`` of request ``request``."""

    request: int
    copy: int
    prompt_ids: tuple[int, ...]
    seed: int | None


def row_seed(request_seed: int, copy: int) -> int:
    """The seed of copy ``copy`` of a request seeded ``request_seed`` (63-bit, stable across runs)."""
    blob = f"hf-row\x1f{request_seed}\x1f{copy}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1


def batch_seed(row_seeds: Sequence[int | None]) -> int | None:
    """One seed for a whole batch, from its rows' seeds in batch order; ``None`` if no row is seeded.

    Unseeded rows contribute a fixed placeholder so that a batch's seed only changes when its
    seeded content changes.
    """
    if all(seed is None for seed in row_seeds):
        return None
    blob = "\x1f".join("-" if seed is None else str(seed) for seed in row_seeds).encode()
    return int.from_bytes(hashlib.sha256(b"hf-batch\x1f" + blob).digest()[:8], "big") >> 1


class HFEngine:
    """Batched chat generation with a transformers causal LM (implements ``shared.engine.Engine``).

    Seeding: transformers samples every row of a batch from one global torch RNG, so rows cannot be
    seeded independently the way vLLM seeds each request. Instead each row gets a seed
    ``row_seed(request.seed, copy)``, each batch a seed derived from its rows' seeds, and the torch
    RNG is reset to it before the batch (inside ``torch.random.fork_rng``, so the caller's RNG
    stream is left untouched; ``generate`` takes no ``generator``). Outputs are therefore
    reproducible for the same request list and the same ``batch_size`` (and device/dtype), run
    after run; they are not invariant to how requests are split across calls or batches. Batches
    whose rows carry no seed at all are sampled from the current global RNG state, like unseeded
    vLLM requests.

    ``stats`` counts prompt tokens per generated row (the work actually done: a request with
    ``n=4`` costs four prompt passes here) and generated tokens up to and including the end token,
    excluding padding.
    """

    def __init__(self, model_path: str | Path, config: HFEngineConfig | None = None) -> None:
        """Load the model and tokenizer from a local folder (no download is ever attempted)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = config or HFEngineConfig()
        path = check_model_folder(model_path)  # a ModelFolderError: EngineStartError + FileNotFoundError
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=config.trust_remote_code)
        # transformers 5 takes `dtype=`; the old `torch_dtype=` still works but logs a deprecation.
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=_DTYPES[config.dtype], trust_remote_code=config.trust_remote_code
        )
        self._setup(model, tokenizer, config, name=str(path))

    @classmethod
    def from_pretrained_objects(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: HFEngineConfig | None = None,
    ) -> HFEngine:
        """An engine around an already loaded model and tokenizer (tests, training loops)."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, config or HFEngineConfig(), name=type(model).__name__)
        return engine

    def _setup(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: HFEngineConfig,
        name: str,
    ) -> None:
        """Shared tail of both constructors: device, eval mode, padding and end tokens."""
        self.config = config
        self.name = name
        self.stats = EngineStats()
        self.progress_callback: ProgressCallback | None = None
        self.device = resolve_device(config.device)
        self.model = model.to(self.device).eval()
        # `auto` decides here: say what it decided, so a GPU user never runs on the CPU unknowingly
        log.info(
            f"hf engine for {name} on {self.device} ({self.model.dtype}; hf.device={config.device})",
            extra={"event": "engine.device", "device": str(self.device), "requested": config.device},
        )
        self.tokenizer = tokenizer
        if tokenizer.chat_template is None:
            raise ValueError(f"the tokenizer of {name} has no chat template; a chat model is required")
        # Decoder-only batching needs the padding on the left so every row's last token is real.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"the tokenizer of {name} has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id: int = int(tokenizer.pad_token_id)
        self.eos_token_ids: list[int] = self._end_token_ids()
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)

    def close(self) -> None:
        """Drop the weights now (not at the next garbage collection) and return cached GPU memory.

        After ``close`` the engine cannot generate; a worker builds the next version's engine.
        """
        import gc

        self.__dict__.pop("model", None)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _end_token_ids(self) -> list[int]:
        """End-of-turn ids: the model's generation config's (often a list) plus the tokenizer's eos."""
        ids: list[int] = []
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.append(configured)
        elif configured is not None:
            ids.extend(int(i) for i in configured)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(int(self.tokenizer.eos_token_id))
        if not ids:
            raise ValueError(f"{self.name} defines no end-of-sequence token; generation would never stop")
        return ids

    # --- generation ------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        """For each request, its ``n`` completions, in request order (see the class docstring)."""
        requests = list(requests)
        if not requests:
            return []
        outputs: list[list[str | None]] = [[None] * r.n for r in requests]
        groups: dict[_SamplingKey, list[_Row]] = {}
        for index, original in enumerate(requests):
            prompt_ids = tuple(self._prompt_ids(original))
            request = fit_to_context(original, len(prompt_ids), self.max_positions, self.config.overlong)
            if request is None:  # skipped: its completions stay empty
                self.stats.overlong_skipped += 1
                continue
            self.stats.overlong_truncated += request is not original
            key: _SamplingKey = (
                request.temperature,
                request.top_p if request.temperature > 0 else 1.0,  # greedy ignores top_p
                request.max_new_tokens,
                tuple(s for s in request.stop or () if s),  # "" would cut everything
            )
            for copy in range(request.n):
                seed = None if request.seed is None else row_seed(request.seed, copy)
                groups.setdefault(key, []).append(_Row(index, copy, prompt_ids, seed))

        total = sum(len(rows) for rows in groups.values())  # skipped requests have no rows
        done = 0
        for key, rows in groups.items():  # dicts keep first-seen order: deterministic
            rows.sort(key=lambda row: (len(row.prompt_ids), row.request, row.copy))
            generation_config = self._generation_config(key)
            for start in range(0, len(rows), self.config.batch_size):
                batch = rows[start : start + self.config.batch_size]
                texts = self._run_batch(batch, generation_config, stop=key[3])
                for row, text in zip(batch, texts, strict=True):
                    outputs[row.request][row.copy] = text
                done += len(batch)
                if self.progress_callback is not None:
                    self.progress_callback(done, total)

        self.stats.calls += 1
        self.stats.requests += len(requests)
        self.stats.completions += sum(r.n for r in requests)
        return [[text if text is not None else "" for text in completions] for completions in outputs]

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """Token ids of the request's chat, rendered with the generation prompt and no extra specials.

        The template already holds every special token the model expects; ``add_special_tokens``
        would add a second BOS on some tokenizers.
        """
        template = self.tokenizer.apply_chat_template
        text = template(request.messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generation_config(self, key: _SamplingKey) -> GenerationConfig:
        """A complete generation config for one sampling group.

        Every flag that matters is set explicitly, so the model's own ``generation_config.json``
        (which may carry e.g. a default temperature or top_k) cannot leak in, and greedy groups do
        not set sampling-only flags (which is what makes transformers warn that "generation flags
        are not valid").
        """
        from transformers import GenerationConfig

        temperature, top_p, max_new_tokens, stop = key
        common: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "num_beams": 1,
            "repetition_penalty": 1.0,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "stop_strings": list(stop) or None,
        }
        if temperature == 0:
            # The sampling flags get transformers' neutral values rather than staying unset: unset
            # ones would be filled from the model's generation_config.json and trigger the warning.
            return GenerationConfig(do_sample=False, temperature=1.0, top_p=1.0, top_k=50, **common)
        return GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, **common)

    def _run_batch(
        self, batch: Sequence[_Row], generation_config: GenerationConfig, stop: tuple[str, ...]
    ) -> list[str]:
        """Generate one left-padded batch and return each row's decoded, stop-cut completion."""
        width = max(len(row.prompt_ids) for row in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids, dtype=torch.long)
            attention_mask[i, width - len(row.prompt_ids) :] = 1

        seed = batch_seed([row.seed for row in batch])
        # generate() has no generator argument: sampling draws from the global torch RNG. A seeded
        # batch resets it inside fork_rng, so the caller's RNG stream is left exactly as it was.
        cuda_devices = [self.device] if self.device.type == "cuda" else []
        extra: dict[str, Any] = {"tokenizer": self.tokenizer} if stop else {}
        with torch.random.fork_rng(devices=cuda_devices, enabled=seed is not None), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            sequences = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=generation_config,
                **extra,
            )
        new_tokens = sequences[:, width:].cpu().tolist()

        texts = []
        limit = int(generation_config.max_new_tokens)
        for row, tokens in zip(batch, new_tokens, strict=True):
            tokens = self._trim(tokens)
            self.stats.prompt_tokens += len(row.prompt_ids)
            self.stats.generated_tokens += len(tokens)
            # at the limit with no end token: cut off (a stop string ends a row earlier than this)
            if len(tokens) >= limit and not (tokens and tokens[-1] in self.eos_token_ids):
                self.stats.length_capped += 1
            texts.append(_cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), stop))
        return texts

    def _trim(self, tokens: list[int]) -> list[int]:
        """A row's generated tokens up to and including its first end token, without padding.

        Rows that finish early are filled with ``pad_token_id`` up to the batch's longest row. When
        pad and eos are the same token, a row cut by a stop string (rather than an end token)
        counts one pad as its end token: a one-token overcount that keeps the rule simple.
        """
        for i, token in enumerate(tokens):
            if token in self.eos_token_ids:
                return tokens[: i + 1]
        end = len(tokens)
        while end > 0 and tokens[end - 1] == self.pad_token_id:
            end -= 1
        return tokens[:end]


def resolve_device(device: str) -> torch.device:
    """The torch device ``device`` names; ``auto`` is cuda when torch sees a GPU, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the earliest occurrence of any stop string (the stop string excluded)."""
    cut = len(text)
    for s in stop:
        position = text.find(s)
        if position != -1:
            cut = min(cut, position)
    return text[:cut]
