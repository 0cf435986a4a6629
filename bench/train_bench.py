"""Train benchmarks: our trainer's step against a plain `SFTTrainer` step, and `round` stage by stage.

The overhead row runs both trainers on the same turns, same batches and same settings, alternating
them and keeping each one's median optimizer-step time, so neither pays the other's warm-up. The plain
trainer is TRL's own cross-entropy on the response tokens (its collator, its loss); ours adds the
annotation tensors, the weighted divergence and the per-step metrics.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace

import datasets
import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from bench.table import Row
from pipeline.backends.hf import load_causal_lm, load_tokenizer
from pipeline.config import Config
from pipeline.rounds import recorded_rounds, run_round
from pipeline.runs import RunLayout
from pipeline.train_data import build_examples
from pipeline.trainer import train_student


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (forward, backward, optimizer), nothing around it."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._tick = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._tick = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._tick)


def plain_sft_steps(model_path: str, examples: datasets.Dataset, config: Config, steps: int) -> list[float]:
    """Step times of TRL's stock `SFTTrainer` (cross-entropy on the response tokens) on the same rows."""
    settings = config.train
    tokenizer = load_tokenizer(model_path)
    rows = [
        {"input_ids": e["prompt_ids"] + e["response_ids"], "labels": [-100] * len(e["prompt_ids"]) + e["response_ids"]}
        for e in examples
    ]
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="sage-opd-bench-") as scratch:
        trainer = SFTTrainer(
            model=load_causal_lm(model_path, torch.device("cpu"), torch.float32),
            args=SFTConfig(
                output_dir=scratch,
                per_device_train_batch_size=settings.per_device_batch_size,
                learning_rate=settings.learning_rate,
                max_steps=steps,
                max_grad_norm=settings.max_grad_norm,
                logging_steps=settings.logging_steps,
                save_strategy="no",
                report_to="none",
                remove_unused_columns=False,
                max_length=None,
                dataset_kwargs={"skip_prepare_dataset": True},
                use_cpu=True,
            ),
            data_collator=DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id),
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[timer],
        )
        trainer.train()
    return timer.seconds


def ours_steps(model_path: str, examples: datasets.Dataset, stats: dict, config: Config) -> list[float]:
    """Step times of our trainer over one pass of `examples` (whole optimizer batches)."""
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="sage-opd-bench-") as scratch:
        train_student(
            model_path, examples, stats, replace(config.train, epochs=1), scratch, seed=config.seed, callbacks=[timer]
        )
    return timer.seconds


def training_overhead(config: Config, turns: list[dict], annotations: list[dict], steps: int = 8) -> Row:
    """Median step time of the SAGE-OPD trainer over TRL's plain `SFTTrainer` on the same tokens."""
    student = config.models.student
    batch = config.train.per_device_batch_size
    examples, stats = build_examples(turns, annotations, config.train, world_batch=batch, seed=config.seed)
    steps = min(steps, len(examples) // batch)
    examples = examples.select(range(steps * batch))
    ours, plain = [], []
    for _ in range(2):  # alternate; the first step of each run is a warm-up and is left out
        ours += ours_steps(student, examples, stats, config)[1:]
        plain += plain_sft_steps(student, examples, config, steps)[1:]
    ratio = statistics.median(ours) / statistics.median(plain)
    return Row(
        f"training step overhead ({config.train.loss})",
        ratio,
        "<= 1.15",
        ratio <= 1.15,
        f"median step {statistics.median(ours) * 1000:.0f} ms vs plain SFTTrainer "
        f"{statistics.median(plain) * 1000:.0f} ms, {batch} turns a step, {len(ours)} steps each",
    )


def round_stages(config: Config, rounds: int, label: str = "round") -> list[Row]:
    """Run `rounds` rounds of a fresh run: one row of seconds per stage, and (when the eval plays the
    training games) the success they reach."""
    layout = RunLayout.of(config)
    for _ in range(rounds - len(recorded_rounds(layout))):
        run_round(config)
    entries = recorded_rounds(layout)[:rounds]
    rows = []
    for stage in ("rollout", "annotate", "train", "eval", "eval-initial"):
        seconds = [e["seconds"][stage] for e in entries if stage in e["seconds"]]
        if seconds:
            rows.append(
                Row(
                    f"{label}: {stage} seconds",
                    statistics.mean(seconds),
                    "-",
                    True,
                    "per round: " + ", ".join(f"{s:.1f}" for s in seconds),
                )
            )
    if "train" not in entries[0]["initial_success_by_split"]:
        return rows
    initial = entries[0]["initial_success_by_split"]["train"]
    final = entries[-1]["success_by_split"]["train"]
    trajectory = " -> ".join(f"{e['success_by_split']['train']:.0%}" for e in entries)
    rows.append(
        Row(
            f"train-game success after {rounds} rounds minus initial",
            final - initial,
            "> 0",
            final > initial,
            f"eval on the training games: {initial:.0%} (initial) -> {trajectory}; run {layout.root}",
        )
    )
    return rows
