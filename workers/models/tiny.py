"""A tiny random chat model, built offline in seconds, that speaks the product's formats.

Tests, the demo and benchmarks need a real Hugging Face model folder (config, weights, tokenizer with
a chat template) but cannot download one. :func:`build_tiny_model` makes one from scratch:

* a byte-level BPE tokenizer trained on a corpus this module writes itself (instruction sentences,
  the judge and refine templates, digits, punctuation), with ChatML special tokens;
* a 2-layer Llama with random (seeded) weights and head_dim 32 (the smallest vLLM's CPU build serves);
* a short "imprint" training run on chats in the product's formats, so that sampling the model on a
  judge prompt gives ``Final Judgement ...: Yes/No`` about half of each, and on a refine chat gives
  ``[[start]] ... [[end]]``. The whole pipeline (sample, judge, refine, assemble) then has
  something to parse, while the verdicts stay random enough to exercise every branch.

The output is an ordinary folder: ``AutoModelForCausalLM/AutoTokenizer.from_pretrained(path)`` load
it, so the engines treat it like any downloaded model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from shared.iopo import REWRITE_TEMPLATE
from shared.templates import (
    END_MARKER,
    JUDGE_TEMPLATE,
    REFINE_INSTRUCTION,
    START_MARKER,
    judge_messages,
    refine_conversation,
)

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

# Bump when the recipe changes so that cached builds are not reused across incompatible recipes.
RECIPE_VERSION = 4
MARKER_FILE = "spar_tiny.json"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySettings:
    """Everything that determines the built model; hashed into the cache folder name."""

    seed: int = 0
    imprint_steps: int = 150
    vocab_size: int = 1536  # an upper bound: the small corpus runs out of merges near 1100
    hidden_size: int = 64
    num_layers: int = 2
    # head_dim = hidden_size / num_heads = 32: vLLM's CPU attention accepts head sizes 32, 64, 80,
    # ..., 512 only (16 fails at the first generation), and the real vLLM tests run this model.
    # Two heads cost the same as four (the projections are hidden x hidden either way).
    num_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 2048
    imprint_batch_size: int = 16
    imprint_lr: float = 1e-2
    recipe_version: int = RECIPE_VERSION

    def digest(self) -> str:
        """Short hash of the settings and of the templates the model is imprinted with."""
        blob = json.dumps(asdict(self), sort_keys=True) + JUDGE_TEMPLATE + REFINE_INSTRUCTION
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- synthetic content -------------------------------------------------------------------------

_TOPICS = [
    "the sea",
    "a city at night",
    "autumn leaves",
    "a small robot",
    "the moon",
    "coffee",
    "a river",
    "mountains",
    "a lost key",
    "friendship",
    "the library",
    "rain",
    "a train journey",
    "bees",
    "a garden",
    "winter",
    "the desert",
    "music",
    "a lighthouse",
    "the market",
]
_TASKS = [
    "Write a short poem about {t}",
    "Describe {t}",
    "Write a story about {t}",
    "Give three facts about {t}",
    "Explain why people like {t}",
    "Write a haiku about {t}",
    "Summarize a day spent with {t}",
    "Write a product description for {t}",
]
_CONSTRAINTS = [
    "in exactly {n} sentences",
    "in fewer than {n0} words",
    "using only lowercase letters",
    "in all capital letters",
    "without using any commas",
    "and include the keyword '{w}'",
    "and end with the phrase 'That is all.'",
    "as a numbered list of {n} items",
    "and wrap the whole answer in double quotes",
    "in JSON format",
    "with a title in <<brackets>>",
    "and mention the word '{w}' at least {n} times",
    "in {n} paragraphs separated by ***",
]
_WORDS = ["river", "light", "quiet", "blue", "stone", "hope", "spark", "north", "glass", "seed"]
_SENTENCES = [
    "The {w} moved slowly under a grey sky.",
    "Everyone gathered near the {w} before dawn.",
    "It was a calm evening, and the {w} was bright.",
    "She wrote a note about the {w}.",
    "The old map showed a path to the {w}.",
    "We counted {n} boats along the {w}.",
    "A gentle wind carried the smell of {w}.",
    "He smiled and said the {w} was enough.",
]
_CHECKS = [
    "The Output keeps to the topic.",
    "The Output has the requested number of sentences.",
    "The Output uses capital letters, which the Prompt forbids.",
    "The keyword is missing.",
    "The Output is too long for the word limit.",
    "The Output contains commas.",
    "The format is correct.",
    "The Output does not end with the required phrase.",
    "Every constraint is satisfied.",
    "The list has the wrong number of items.",
]
_REFLECTIONS = [
    "Remove the extra sentence and keep the rest.",
    "Add the missing keyword once.",
    "Rewrite the text in lowercase letters.",
    "Shorten the answer to fit the word limit.",
    "Replace the commas with periods.",
    "Add the required closing phrase at the end.",
    "Turn the answer into a numbered list.",
    "Keep the content and fix the format.",
]


def _make_prompt(rng: random.Random) -> str:
    """A synthetic instruction with one or two constraints."""
    task = rng.choice(_TASKS).format(t=rng.choice(_TOPICS))
    parts = [task]
    for constraint in rng.sample(_CONSTRAINTS, rng.randint(1, 2)):
        parts.append(
            constraint.format(n=rng.randint(2, 5), n0=rng.choice([20, 50, 100]), w=rng.choice(_WORDS))
        )
    return " ".join(parts) + "."


def _make_text(rng: random.Random, sentences: int | None = None) -> str:
    """A short synthetic response: one to three sentences."""
    count = sentences if sentences is not None else rng.randint(1, 3)
    return " ".join(
        rng.choice(_SENTENCES).format(w=rng.choice(_WORDS), n=rng.randint(2, 9)) for _ in range(count)
    )


def _judgment(rng: random.Random) -> str:
    """A judge reply in SPaR's two-line format with a coin-flip verdict (kept stochastic on purpose)."""
    checks = " ".join(rng.sample(_CHECKS, rng.randint(1, 2)))
    verdict = "Yes" if rng.random() < 0.5 else "No"
    return (
        f"Step-by-step verification: {checks}\n"
        f"Final Judgement (if the Output accurately follows the Prompt): {verdict}"
    )


def _refinement(rng: random.Random) -> str:
    """A refine reply in SPaR's format with a short refined output between the markers."""
    return (
        f"Reflection on how to refine the Output: {rng.choice(_REFLECTIONS)}\n"
        f"Final Refined Output: {START_MARKER} {_make_text(rng, rng.randint(1, 2))} {END_MARKER}"
    )


def _imprint_chats(rng: random.Random, count: int) -> list[list[dict[str, str]]]:
    """Chats whose LAST assistant turn is the training target: judge, refine and plain ones."""
    chats: list[list[dict[str, str]]] = []
    for i in range(count):
        kind = i % 4
        prompt, response = _make_prompt(rng), _make_text(rng)
        if kind == 0:
            chat = judge_messages(prompt, response) + [{"role": "assistant", "content": _judgment(rng)}]
        elif kind == 1:
            chat = refine_conversation(prompt, response, _judgment(rng))
            chat = chat + [{"role": "assistant", "content": _refinement(rng)}]
        elif kind == 2:
            chat = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": _make_text(rng)},
            ]
        else:  # IOPO instruction rewriting (shared/iopo.py)
            ask = REWRITE_TEMPLATE.format(prompt=prompt, response=response, judgment=_judgment(rng))
            answer = (
                f"Reflection on how to rewrite the Prompt: {rng.choice(_REFLECTIONS)}\n"
                f"Final Rewritten Prompt: {START_MARKER} {_make_prompt(rng)} {END_MARKER}"
            )
            chat = [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
        chats.append(chat)
    return chats


def _tokenizer_corpus(rng: random.Random) -> list[str]:
    """Text the BPE tokenizer is trained on: templates, formats, sentences, digits, punctuation."""
    # The templates recur in every judge/refine prompt: repeating them lets BPE merge their words
    # into few tokens, which keeps imprinting (and every test generation) short.
    lines = [JUDGE_TEMPLATE, REFINE_INSTRUCTION, REWRITE_TEMPLATE] * 20
    lines += ["system\n", "user\n", "assistant\n"] * 20
    for _ in range(300):
        lines.append(_make_prompt(rng))
        lines.append(_make_text(rng))
        lines.append(_judgment(rng))
        lines.append(_refinement(rng))
    lines.append(" ".join(str(i) for i in range(1000)))
    lines.append("! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~ \n\t")
    lines.append("The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.")
    return lines


# --- building ----------------------------------------------------------------------------------


def _build_tokenizer(settings: TinySettings, corpus_file: Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the corpus file and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        min_frequency=2,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train([str(corpus_file)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=settings.max_position_embeddings,
    )


def _encode_chat(
    tokenizer: PreTrainedTokenizerFast, chat: list[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """Token ids of a chat and its labels: only the final assistant turn (and its end token) count.

    The prompt part is tokenized exactly as the engines tokenize a request (template with the
    generation prompt, no extra special tokens), so the model learns to continue that form.
    """
    prefix = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(chat[-1]["content"] + IM_END, add_special_tokens=False)["input_ids"]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids


def _imprint(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    settings: TinySettings,
    rng: random.Random,
) -> float:
    """Train briefly on format chats (AdamW, CPU); returns the last loss, for the marker file."""
    # Batches hold one kind of chat each (judge, refine or plain): their lengths differ by 5x,
    # and padding a plain chat to a refine chat's length would waste most of the compute.
    by_kind: list[list[tuple[list[int], list[int]]]] = [[], [], []]
    for i, chat in enumerate(_imprint_chats(rng, 240)):
        by_kind[i % 3].append(_encode_chat(tokenizer, chat))
    pad_id = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.imprint_lr, weight_decay=0.0)
    warmup = max(1, settings.imprint_steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.1, 1.0 - (step - warmup) / max(1, settings.imprint_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    loss_value = float("nan")
    for step in range(settings.imprint_steps):
        batch = rng.sample(by_kind[step % 3], settings.imprint_batch_size)
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, labs) in enumerate(batch):  # right padding: training needs no generation
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(labs)] = torch.tensor(labs)
            attention[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
    model.eval()
    return loss_value


def _portable_tokenizer_config(folder: Path) -> None:
    """Make the saved tokenizer loadable by transformers 4 too (the vLLM image pins its own).

    transformers 5 records its class as ``TokenizersBackend``, a name version 4 does not know, and
    keeps the chat template only in ``chat_template.jinja``. ``PreTrainedTokenizerFast`` is an alias
    of the same class in version 5, and a template inside the config is read by both.
    """
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    data.setdefault("chat_template", CHAT_TEMPLATE)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the imprint on one intra-op thread, then restore the previous setting.

    The matrices are tiny, so a second thread buys little, and on a shared machine (parallel test
    workers, CI) oversubscribed OpenMP threads made the build 3x slower (84 s against 30 s). One
    thread also fixes the reduction order, so a given seed builds the same weights more reliably.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' one-shard "Writing model shards" bar for the build, then restore it."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_tiny_model(out_dir: Path, seed: int = 0, imprint_steps: int = 150) -> Path:
    """Build the tiny chat model into ``out_dir`` (which must not exist, or be empty) and return it.

    Everything is built in a temporary sibling folder and renamed into place at the end, so a crash
    or a concurrent reader never sees a half-written model. ``imprint_steps=0`` skips the format
    training and leaves purely random weights.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not empty; pass a new folder to build into")
    if imprint_steps < 0:
        raise ValueError("imprint_steps must be >= 0")
    settings = TinySettings(seed=seed, imprint_steps=imprint_steps)
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        rng = random.Random(seed)
        corpus_file = tmp / "corpus.txt"
        corpus_file.write_text("\n".join(_tokenizer_corpus(rng)), encoding="utf-8")
        tokenizer = _build_tokenizer(settings, corpus_file)
        corpus_file.unlink()

        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=settings.hidden_size,
            intermediate_size=settings.intermediate_size,
            num_hidden_layers=settings.num_layers,
            num_attention_heads=settings.num_heads,
            num_key_value_heads=settings.num_heads,
            max_position_embeddings=settings.max_position_embeddings,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        final_loss = None
        if imprint_steps:
            # Seed torch again so imprinting does not depend on how many draws init made.
            torch.manual_seed(seed + 1)
            with _one_torch_thread():
                final_loss = _imprint(model, tokenizer, settings, rng)

        with _quiet_progress_bars():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _portable_tokenizer_config(tmp)
        marker = {
            **asdict(settings),
            "digest": settings.digest(),
            "final_imprint_loss": final_loss,
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        # mkdtemp (and safetensors) make private files; the model folder is a shared artefact.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out_dir.exists():  # an empty folder the caller made: replace it
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def tiny_model_cached(cache_dir: Path, seed: int = 0, imprint_steps: int = 150) -> Path:
    """The tiny model under ``cache_dir/tiny-<hash of settings>``, built on first use only.

    Safe against concurrent builders: each builds into its own temporary folder and the loser of
    the final rename throws its copy away and uses the winner's.
    """
    settings = TinySettings(seed=seed, imprint_steps=imprint_steps)
    target = Path(cache_dir) / f"tiny-{settings.digest()}"
    if (target / MARKER_FILE).is_file():
        return target
    try:
        return build_tiny_model(target, seed=seed, imprint_steps=imprint_steps)
    except (FileExistsError, OSError):
        if (target / MARKER_FILE).is_file():  # somebody else finished first
            return target
        raise
