"""Merging a LoRA adapter into its base model, to start the next iteration's training from it."""

from __future__ import annotations

from pathlib import Path


def merge_adapter(base: Path, adapter: Path, out_dir: Path) -> None:
    """Write base + adapter as one plain Hugging Face folder (weights merged, adapter gone)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out_dir)
    tokenizer_dir = adapter if (adapter / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
