"""LoRA through `peft` (`train.peft.r` > 0): the adapters train, the base weights stay frozen.

A round's checkpoint is the merged model (base + scaled adapter product in every adapted layer), so
rollout, eval, vLLM and the next round load it as they load any checkpoint; the adapter itself is kept
in `adapter/` inside it, for whoever wants to stack or inspect it. Imported only when LoRA is asked for:
`peft` is an optional dependency (`pip install -e ".[peft]"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel

from pipeline.config import LoraSettings

ADAPTER_DIR = "adapter"


def lora_config(settings: LoraSettings) -> LoraConfig:
    """peft's config for `settings`; `[all-linear]` is peft's own shorthand (every linear layer but the head)."""
    targets = settings.target_modules
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        task_type="CAUSAL_LM",
    )


def save_merged(model: PeftModel, tokenizer: Any, folder: Path) -> None:
    """The adapter into `folder/adapter/`, then the merged model and the tokenizer into `folder`. Merging
    changes `model` in place: call it once training is over."""
    model.save_pretrained(folder / ADAPTER_DIR)
    merged = model.merge_and_unload()
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
