"""Stage 5 of SPaR: training the actor (preference objectives) and the refiner (RFT), on top of TRL.

- :mod:`workers.training.actor`: :class:`~workers.training.actor.PreferenceTrainer`, a ``trl.DPOTrainer``
  whose loss is one of the five objectives of ``shared.losses`` (dpo, ipo, sr_dpo, sr_ipo, iopo), and
  :func:`~workers.training.actor.train_actor`.
- :mod:`workers.training.refiner`: :func:`~workers.training.refiner.train_refiner`, TRL's ``SFTTrainer`` with
  the loss on assistant turns only.
- :mod:`workers.training.launch`: the ``python -m workers.training.launch`` entry point that
  ``accelerate launch`` runs on every GPU of a node.

Both trainers tokenise chats with :func:`encode_chat` defined here, so that "the response tokens" mean the
same span for the actor's log-probs and for the refiner's labels: the assistant turn's content and its
end-of-turn token, never the template's text around it. This is the template-agnostic replacement for
TRL's ``assistant_only_loss``, which needs ``{% generation %}`` markers that most chat templates (the tiny
model's ChatML one, SmolLM2's) lack, and which TRL 1.16 only patches in for a list of known templates.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, str]


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _render_ids(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` rendered by the chat template.

    The text is rendered first and tokenised without special tokens, because the template already writes
    them (adding them again would double a BOS token on templates that include it).
    """
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat(tokenizer: Any, messages: list[Message]) -> tuple[list[int], list[int]]:
    """Token ids of a whole chat and a 0/1 mask that is 1 exactly on the assistant turns' tokens.

    Each assistant turn spans from the end of the chat rendered up to it with the generation prompt, to
    the end of the chat rendered through it, cut after its last end-of-turn (EOS) token: the model must
    learn to stop, but what a template writes after that token (ChatML's newline) is never generated.
    Spans are located by common prefixes with the full rendering, so a template that merges tokens across
    a boundary shifts the span slightly instead of failing.
    """
    if not messages:
        raise ValueError("empty chat")
    ids = _render_ids(tokenizer, messages, add_generation_prompt=False)
    mask = [0] * len(ids)
    eos_id = tokenizer.eos_token_id
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = 0 if i == 0 else _common_prefix(_render_ids(tokenizer, messages[:i], True), ids)
        stop = _common_prefix(_render_ids(tokenizer, messages[: i + 1], False), ids)
        span = ids[start:stop]
        if eos_id is not None and eos_id in span:
            stop = start + len(span) - span[::-1].index(eos_id)
        for j in range(start, stop):
            mask[j] = 1
    return ids, mask


def encode_prompt_response(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a single-turn chat: user ``prompt``, assistant ``response``.

    The prompt ids end with the template's generation prompt, exactly what the actor is sampled with (no
    system prompt); the response ids are the assistant turn as :func:`encode_chat` delimits it.
    """
    chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids, mask = encode_chat(tokenizer, chat)
    if 1 not in mask:
        raise ValueError("the chat template rendered no assistant tokens for this response")
    start = mask.index(1)
    stop = len(mask) - mask[::-1].index(1)
    return ids[:start], ids[start:stop]
