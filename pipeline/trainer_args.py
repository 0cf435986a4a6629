"""TRL's settings for one training, checked before a round spends its rollout on them, and where the
trackers write.

`SFTConfig` gets our `train` fields, the settings the exact normalization and the checkpoint swap rest on,
and then whatever `train.trainer_args` adds (a scheduler, an optimizer, ...), checked by SFTConfig itself.
`pipeline.config.RESERVED_TRAINER_ARGS` names what `trainer_args` may not set.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations
from trl import SFTConfig

from pipeline.config import TrainConfig
from pipeline.errors import UserError


def sft_config(cfg: TrainConfig, output_dir: str | Path, *, seed: int, cuda: bool, bf16: bool) -> SFTConfig:
    """TRL's settings for one training: ours, then `cfg.trainer_args` (which may not repeat ours: see
    `RESERVED_TRAINER_ARGS`). A setting SFTConfig does not have, or refuses, is a UserError naming it."""
    known = {item.name for item in dataclasses.fields(SFTConfig)}
    if unknown := sorted(set(cfg.trainer_args) - known):
        raise UserError(f"train.trainer_args.{unknown[0]} is not a setting of TRL's SFTConfig")
    ours = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "max_grad_norm": cfg.max_grad_norm,
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "logging_steps": cfg.logging_steps,
        "seed": seed,
        "save_strategy": "steps" if cfg.save_steps else "no",
        # Two saved states: the newer may be half-written when a kill comes (resume takes the newest whole one).
        **({"save_steps": cfg.save_steps, "save_total_limit": 2} if cfg.save_steps else {}),
        "report_to": cfg.report_to or "none",
        "remove_unused_columns": False,
        "max_length": None,
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "use_cpu": not cuda,
        "bf16": bf16,
        "activation_checkpointing": _activation_checkpointing(cfg, cuda),
        "dataloader_drop_last": False,
    }
    try:
        return SFTConfig(**ours, **cfg.trainer_args)
    except (TypeError, ValueError) as err:
        culprit = next((key for key in cfg.trainer_args if not _accepted(ours, key, cfg.trainer_args[key])), None)
        where = f"train.trainer_args.{culprit}" if culprit else "train.trainer_args"
        raise UserError(f"{where}: {str(err).splitlines()[0]}") from None


_FSDP_CHECKPOINTING = ("ACCELERATE_USE_FSDP", "FSDP_ACTIVATION_CHECKPOINTING")  # what accelerate launch exports


def _activation_checkpointing(cfg: TrainConfig, cuda: bool) -> bool:
    """`train.gradient_checkpointing`, or, unset, on with CUDA. Under an FSDP launch that checkpoints
    activations itself (configs/accelerate/fsdp2.yaml), FSDP's does it: transformers refuses both at once."""
    if _fsdp_checkpoints_activations():
        if cfg.gradient_checkpointing:
            raise UserError(
                "train.gradient_checkpointing and the accelerate config's fsdp_activation_checkpointing both "
                "checkpoint activations: set train.gradient_checkpointing: false (FSDP's is the one to keep)"
            )
        return False
    return cuda if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing


def _fsdp_checkpoints_activations() -> bool:
    """Whether `accelerate launch` started this process under FSDP with its own activation checkpointing."""
    return all(os.environ.get(name, "false").lower() in ("1", "true") for name in _FSDP_CHECKPOINTING)


@contextmanager
def tracker_dirs(logging_dir: Path) -> Iterator[None]:
    """Point the trackers at `logging_dir` for one training: TensorBoard's event files into `tensorboard/`,
    W&B's run files, and an MLflow file store unless MLFLOW_TRACKING_URI already names one. Each reads
    its place from the environment (TensorBoard's when the Trainer is made); they are restored afterwards."""
    wanted = {"TENSORBOARD_LOGGING_DIR": str(logging_dir / "tensorboard"), "WANDB_DIR": str(logging_dir)}
    if "MLFLOW_TRACKING_URI" not in os.environ:
        wanted["MLFLOW_TRACKING_URI"] = (logging_dir / "mlruns").absolute().as_uri()
    previous = {name: os.environ.get(name) for name in wanted}
    logging_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_trainer_settings(cfg: TrainConfig) -> None:
    """Refuse bad `trainer_args`, trackers and a missing peft before a round spends its rollout on them
    (checked with the CPU's settings: nothing here depends on the device)."""
    available = get_available_reporting_integrations()
    for name in cfg.report_to:
        if name not in INTEGRATION_TO_CALLBACK:
            raise UserError(
                f"train.report_to: {name!r} is not a tracker TRL knows ({', '.join(INTEGRATION_TO_CALLBACK)})"
            )
        if name not in available:
            raise UserError(f"train.report_to names {name}, which is not installed here")
    if cfg.peft.r and importlib.util.find_spec("peft") is None:
        raise UserError("train.peft.r asks for LoRA adapters, which need peft: pip install -e '.[peft]'")
    if cfg.trainer_args:
        with tempfile.TemporaryDirectory(prefix="sage-opd-check-") as scratch:
            sft_config(cfg, scratch, seed=0, cuda=False, bf16=False)


def _accepted(ours: dict[str, Any], key: str, value: Any) -> bool:
    try:
        SFTConfig(**ours, **{key: value})
    except (TypeError, ValueError):
        return False
    return True
