"""The student update: TRL's `SFTTrainer` with our loss over precomputed teacher annotations (DESIGN §1 step 6).

`build_examples` (pipeline/train_data.py) has already cut the turns into optimizer batches and given every
response token its final weight and every row N, the token count of its optimizer batch. This trainer
only has to (1) read the rows in that order, (2) compute Σ w·ℓ / N on each micro-batch, and (3) leave that
number alone: the micro-batch losses of one step then add up to the batch loss exactly, however the batch
is split over gradient accumulation and devices.

- (1) `_get_train_sampler` returns a `SequentialSampler`.
- (3) `loss_is_scaled_for_ga = True`: `Trainer.training_step` would otherwise divide by the number of
  accumulation steps (our batch carries no `labels`, so `num_items_in_batch` is None and the Trainer
  would take our loss for a per-micro-batch mean). Accelerate's own division is by 1 (the Trainer builds
  its `GradientAccumulationPlugin` with `num_steps=1`). Under data parallelism DDP averages gradients
  over ranks while N counts every rank's tokens, so the loss is multiplied by the number of processes.

Student log-probs are taken only at the positions that predict response tokens (`logits_to_keep` with
per-row positions) and only for the ids the loss reads (the sampled token, the teacher's top-k): the LM
head and its float32 log-softmax run on `train.head_chunk_tokens` positions at a time, each piece
recomputed in the backward pass, so a micro-batch never holds its [B, R, vocab] logits.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate.utils import broadcast_object_list, extract_model_from_parallel
from torch.utils.checkpoint import checkpoint
from torch.utils.data import SequentialSampler
from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

from pipeline import losses
from pipeline.atomic import atomic_dir
from pipeline.backends.hf import load_causal_lm, load_tokenizer, require_model_dir
from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.progress import Progress, open_progress
from pipeline.provenance import provenance
from pipeline.train_data import LABELS, UNLABELED, arrow_column, quiet_datasets, with_fillers, world_batch_size
from pipeline.trainer_args import sft_config, tracker_dirs

LABEL_INDEX = {name: index for index, name in enumerate((*LABELS, UNLABELED))}
_PER_TOKEN = ("weights", "sampler_logprobs", "teacher_logprobs", "policy_logprobs")
_TOP_K = ("topk_ids", "topk_logprobs")
SAVED_MARK = "sage-opd-whole"  # in a saved trainer state once all of it is written


@dataclass
class TrainSummary:
    steps: int
    final_loss: float | None
    mean_loss: float | None
    seconds: float
    log_history: list[dict[str, Any]] = field(default_factory=list)
    data_stats: dict[str, Any] = field(default_factory=dict)  # from build_examples
    provenance: dict[str, Any] = field(default_factory=dict)  # code, processes, device, dtype (bf16 = autocast)
    resumed_from_step: int | None = None  # the saved state this training went on from, if any


class OPDCollator:
    """Right-pads a list of examples into tensors; every padded position holds 0 (finite, never -inf).

    Sequence tensors are [B, L] (`input_ids` = prompt + response, `attention_mask`); response tensors are
    [B, R] with R the longest response (`response_ids`, `response_mask`, `weights`, log-probs) or [B, R, k]
    (top-k); row values are [B] (`response_start`, `batch_tokens`, bookkeeping for the logs).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        size = len(features)
        starts = [len(f["prompt_ids"]) for f in features]
        spans = [len(f["response_ids"]) for f in features]
        length = max(start + span for start, span in zip(starts, spans, strict=True))
        width = max(spans)
        input_ids = torch.full((size, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((size, length), dtype=torch.long)
        response_ids = torch.zeros((size, width), dtype=torch.long)
        for row, f in enumerate(features):
            ids = torch.tensor([*f["prompt_ids"], *f["response_ids"]], dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            response_ids[row, : spans[row]] = ids[starts[row] :]
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_start": torch.tensor(starts, dtype=torch.long),
            "response_ids": response_ids,
            "response_mask": torch.arange(width).unsqueeze(0) < torch.tensor(spans).unsqueeze(1),
        }
        for key in (*_PER_TOKEN, *_TOP_K):
            if key not in features[0]:
                continue
            k = len(features[0][key][0]) if key in _TOP_K else None
            shape = (size, width) if k is None else (size, width, k)
            dtype = torch.long if key == "topk_ids" else torch.float32
            values = torch.zeros(shape, dtype=dtype)
            for row, f in enumerate(features):
                values[row, : spans[row]] = torch.tensor(f[key], dtype=dtype).reshape(spans[row], *shape[2:])
            batch[key] = values
        batch["batch_tokens"] = torch.tensor([f["batch_tokens"] for f in features], dtype=torch.float32)
        batch["gain"] = torch.tensor([f["gain"] for f in features], dtype=torch.float32)
        batch["label_index"] = torch.tensor([LABEL_INDEX[f["label"]] for f in features], dtype=torch.long)
        batch["batch_first"] = torch.tensor([bool(f["batch_first"]) for f in features])
        batch["batch_skipped"] = torch.tensor([bool(f["batch_skipped"]) for f in features])
        batch["filler"] = torch.tensor([bool(f["filler"]) for f in features])
        return batch


class StepProgress(TrainerCallback):
    """The optimizer steps as one bar with the newest logged loss, on the command line's display.

    It takes the place of transformers' `ProgressCallback` / `PrinterCallback`, which write every log dict
    to stdout (one line per logging step); the numbers stay in `state.log_history` and from there in
    `_train.json`. Only the main process shows it; `train_student` closes it, also when training fails.
    """

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.progress.begin(state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.progress.advance(1)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs and "loss" in logs:
            self.progress.advance(0, f"loss {logs['loss']:.4f}")


class MarkSaved(TrainerCallback):
    """Marks each saved trainer state as whole once the Trainer has written all of it (`on_save` comes after
    the weights, optimizer, scheduler, RNG and trainer state): a kill during a save leaves a folder without
    the mark, and resuming passes over it."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            (Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / SAVED_MARK).touch()


def last_saved_state(folder: Path) -> Path | None:
    """The newest trainer state in `folder` that `MarkSaved` marked whole; None when there is none."""
    whole = [path for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if (path / SAVED_MARK).is_file()]
    return max(whole, key=_saved_step, default=None)


def _saved_step(state: Path) -> int:
    return int(state.name.rpartition("-")[2])


def quiet_console(trainer: SFTTrainer, label: str) -> Progress | None:
    """Swap the Trainer's stdout printers for a `StepProgress` on the installed display (or for nothing)."""
    for printer in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(printer)
    progress = open_progress(label, "steps")
    if progress is not None:
        trainer.add_callback(StepProgress(progress))
    return progress


def response_logprobs(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], ids: torch.Tensor, chunk_tokens: int
) -> tuple[Any, torch.Tensor]:
    """(model outputs, [B, R, m] float32 log-probs of `ids` [B, R, m] at the positions that predict the
    response tokens).

    The model runs through its own (possibly DDP- or PEFT-wrapped) forward, but its LM head is handed no
    positions there: a pre-hook keeps the head's input, the [B, R, hidden] states. The head and the
    log-softmax then run on `chunk_tokens` positions at a time. With more than one piece and gradients on,
    each is checkpointed (recomputed in the backward pass), so at most one [chunk_tokens, vocab] block is alive.
    `outputs.logits` is empty.
    """
    mask = inputs["response_mask"]
    length = inputs["input_ids"].shape[1]
    # Logits at position p predict token p + 1: response token j of a row sits at response_start + j.
    positions = inputs["response_start"].unsqueeze(1) - 1 + torch.arange(mask.shape[1], device=mask.device)
    head = extract_model_from_parallel(model).get_output_embeddings()
    kept: list[torch.Tensor] = []

    def keep_states(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        kept.append(args[0])
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(keep_states)
    try:
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            use_cache=False,
            logits_to_keep=positions.clamp(max=length - 1),
        )
    finally:
        handle.remove()
    (states,) = kept
    states, flat_ids = states.reshape(-1, states.shape[-1]), ids.reshape(-1, ids.shape[-1])
    recompute = states.shape[0] > chunk_tokens and torch.is_grad_enabled()
    piece = partial(checkpoint, _head_logprobs, use_reentrant=False) if recompute else _head_logprobs
    spans = [slice(start, start + chunk_tokens) for start in range(0, states.shape[0], chunk_tokens)]
    return outputs, torch.cat([piece(head, states[span], flat_ids[span]) for span in spans]).view(ids.shape)


def _head_logprobs(head: torch.nn.Module, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Float32 log-softmax of the head over [n, hidden] states, at `ids` [n, m]."""
    return torch.log_softmax(head(states).float(), dim=-1).gather(-1, ids)


def with_policy_logprobs(trainer: SFTTrainer, examples: datasets.Dataset) -> datasets.Dataset:
    """`examples` with `policy_logprobs`: the log-probs the model about to be trained gives each sampled
    response token, unrestricted, at temperature 1 (π_old of `losses.rkl_loss` when the sampler was not
    the policy). Computed once before the first step, on the trainer's device and precision, one
    micro-batch at a time (written beside the examples when they live in a file)."""
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        with quiet_datasets():
            return examples.map(
                partial(_policy_logprobs, trainer),
                batched=True,
                batch_size=trainer.args.per_device_train_batch_size,
                load_from_cache_file=False,
                new_fingerprint="sage-opd-policy-logprobs",  # not a hash of the closure over the model
            )
    finally:
        model.train(was_training)


@torch.no_grad()
def _policy_logprobs(trainer: SFTTrainer, batch: dict[str, list[Any]]) -> dict[str, list[list[float]]]:
    chunk = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    device = next(trainer.model.parameters()).device  # where the Trainer placed it (the CPU until a launcher moves it)
    inputs = {key: value.to(device) for key, value in trainer.data_collator(chunk).items()}
    with trainer.autocast_smart_context_manager():
        _, logp = response_logprobs(
            trainer.model, inputs, inputs["response_ids"].unsqueeze(-1), trainer.train_config.head_chunk_tokens
        )
    chosen = logp.squeeze(-1).cpu()
    return {
        "policy_logprobs": [chosen[row, : len(example["response_ids"])].tolist() for row, example in enumerate(chunk)]
    }


class SageOPDTrainer(SFTTrainer):
    """`SFTTrainer` whose loss is Σ w·ℓ / N over precomputed weights, read in the order it was built.

    Logs per logging step (into `state.log_history`, beside `loss`): `nll`, `rkl_sampled` (mean of
    log π_θ − log π_T on the sampled tokens), `topk_divergence` (top-k modes), `clip_fraction` (rkl),
    `mean_weight`, `nonzero_weight_fraction`, `skipped_turn_fraction`, `label_<name>` counts, `tokens`
    and `skipped_batches` (optimizer batches with Σw = 0: loss 0, zero gradient).
    """

    # The loss of `compute_loss` is already divided by N of the whole optimizer batch: do not divide it by
    # the number of gradient accumulation steps (transformers' `Trainer.training_step`).
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, train_config: TrainConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_config = train_config
        self._sums: dict[str, torch.Tensor] = {}

    def _prepare_input(self, data: Any) -> Any:
        """Float tensors go to the device as they are: the weights, N and log-probs stay float32. (The Trainer
        would cast every float input to DeepSpeed's dtype, bf16, which keeps 3 significant digits.) The
        model's own inputs are integer ids and masks."""
        if isinstance(data, torch.Tensor) and torch.is_floating_point(data):
            return data.to(device=self.args.device)
        return super()._prepare_input(data)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        return SequentialSampler(self.train_dataset if train_dataset is None else train_dataset)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        cfg = self.train_config
        mask = inputs["response_mask"]
        maskf = mask.float()
        counted = mask & ~inputs["filler"].unsqueeze(1)  # what the logs count: filler rows count nowhere
        topk = cfg.loss.startswith("topk_")
        ids = inputs["response_ids"].unsqueeze(-1)
        outputs, logp = response_logprobs(
            model, inputs, torch.cat([ids, inputs["topk_ids"]], dim=-1) if topk else ids, cfg.head_chunk_tokens
        )
        logp_new = logp[..., 0] * maskf
        extra: dict[str, torch.Tensor] = {}
        if cfg.loss == "rkl":
            sampler = inputs["sampler_logprobs"]
            decoupled = "policy_logprobs" in inputs  # the sampler was not the policy: see `losses.rkl_loss`
            old = inputs["policy_logprobs"] if decoupled else sampler
            per_token = losses.rkl_loss(
                logp_new, old, inputs["teacher_logprobs"], cfg.clip_eps, logp_sampler=sampler if decoupled else None
            )
            ratio = torch.exp(logp_new.detach() - old)
            extra["clipped"] = (((ratio - 1).abs() > cfg.clip_eps) & counted).sum()
        elif topk:
            student_topk = logp[..., 1:]
            per_token = losses.topk_divergence(student_topk, inputs["topk_logprobs"], cfg.loss[5:], cfg.beta)
            extra["divergence"] = (per_token.detach() * counted).sum()
        else:
            per_token = losses.sft_loss(logp_new)
        per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
        num_tokens = inputs["batch_tokens"][0]
        loss = losses.weighted_token_mean(per_token, inputs["weights"], num_tokens)
        # DDP averages the gradients over ranks, but N counts the tokens of all ranks.
        loss = loss * self.accelerator.num_processes
        if model.training:
            self._accumulate(inputs, counted, logp_new.detach(), extra)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _accumulate(
        self,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        logp_new: torch.Tensor,
        extra: dict[str, torch.Tensor],
    ) -> None:
        real = ~inputs["filler"]
        weights = inputs["weights"]  # 0 on filler rows
        sums = {
            "tokens": mask.sum(),
            "weight": weights.sum(),
            "nonzero": ((weights != 0) & mask).sum(),
            "rows": real.sum(),
            "skipped_rows": ((inputs["gain"] == 0) & real).sum(),
            "skipped_batches": (inputs["batch_first"] & inputs["batch_skipped"]).sum(),
            "nll": -(logp_new * mask).sum(),
            **extra,
        }
        if "teacher_logprobs" in inputs:
            sums["rkl_sampled"] = ((logp_new - inputs["teacher_logprobs"]) * mask).sum()
        counts = torch.bincount(inputs["label_index"][real], minlength=len(LABEL_INDEX))
        for name, index in LABEL_INDEX.items():
            sums[f"label_{name}"] = counts[index]
        for key, value in sums.items():
            value = value.detach().double()
            self._sums[key] = self._sums[key] + value if key in self._sums else value

    def _step_metrics(self) -> dict[str, float]:
        """The sums since the last log, reduced over ranks, as the logged numbers."""
        keys = sorted(self._sums)
        totals = self.accelerator.reduce(torch.stack([self._sums[key] for key in keys]), reduction="sum")
        sums = dict(zip(keys, totals.tolist(), strict=True))
        self._sums = {}
        tokens, rows = max(sums["tokens"], 1.0), max(sums["rows"], 1.0)
        metrics = {
            "nll": sums["nll"] / tokens,
            "mean_weight": sums["weight"] / tokens,
            "nonzero_weight_fraction": sums["nonzero"] / tokens,
            "skipped_turn_fraction": sums["skipped_rows"] / rows,
            "skipped_batches": sums["skipped_batches"],
            "tokens": sums["tokens"],
        }
        if "rkl_sampled" in sums:
            metrics["rkl_sampled"] = sums["rkl_sampled"] / tokens
        if "divergence" in sums:
            metrics["topk_divergence"] = sums["divergence"] / tokens
        if "clipped" in sums:
            metrics["clip_fraction"] = sums["clipped"] / tokens
        metrics.update({f"label_{name}": sums[f"label_{name}"] for name in LABEL_INDEX})
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._sums:
            logs = {**logs, **self._step_metrics()}
        super().log(logs, start_time)


def train_student(
    model_path: str | Path,
    examples: datasets.Dataset,
    stats: dict[str, Any],
    cfg: TrainConfig,
    output_dir: str | Path,
    *,
    seed: int,
    threads: int | None = None,
    callbacks: list[Any] | None = None,
    bf16: bool | None = None,
    sampler_is_policy: bool = True,
    logging_dir: Path | None = None,
    state_dir: Path | None = None,
) -> TrainSummary:
    """Train the student at `model_path` on `examples` (from `build_examples`) and save it to `output_dir`.

    `output_dir` is replaced atomically by a checkpoint that `AutoModelForCausalLM.from_pretrained` and
    `AutoTokenizer.from_pretrained` load. CUDA is used when present, else the CPU; `bf16` (autocast,
    float32 master weights) defaults to on exactly when CUDA is used. `callbacks` go to the Trainer.
    `sampler_is_policy=False` (the rollout decoded otherwise than the student's own distribution at
    temperature 1) makes `rkl` use the student's own log-probs as π_old and weight tokens by π_old/q.
    `cfg.report_to`'s trackers write under `logging_dir` (default: the trainer's scratch, deleted after).
    With `cfg.save_steps`, the trainer's state is saved under `state_dir` (the caller keeps it across a kill
    and clears it when it belongs to other settings) and training resumes from the newest whole one there.
    """
    if not examples:
        raise UserError("no turns to train on: the round's turns are empty")
    if threads:
        torch.set_num_threads(threads)
    require_model_dir(model_path)
    # Launchers (torchrun, accelerate launch) export WORLD_SIZE; the trainer's accelerator agrees with it.
    _check_batch_layout(examples, world_batch_size(cfg, int(os.environ.get("WORLD_SIZE", "1"))))
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    bf16 = cuda if bf16 is None else bf16
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, torch.device("cpu"), torch.float32)  # the Trainer places it
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="sage-opd-trainer-"))
        if cfg.report_to:  # only then a `logs/` folder in the round; trackers read it when the Trainer is made
            stack.enter_context(tracker_dirs(Path(logging_dir or scratch)))
        saves = state_dir if cfg.save_steps and state_dir is not None else None
        args = sft_config(cfg, saves or scratch, seed=seed, cuda=cuda, bf16=bf16)
        trainer = SageOPDTrainer(
            model=model,
            args=args,
            data_collator=OPDCollator(pad_token_id),
            train_dataset=examples,
            processing_class=tokenizer,
            callbacks=[*(callbacks or []), *([MarkSaved()] if saves else [])],
            train_config=cfg,
            peft_config=_adapters(cfg),
        )
        if cfg.peft.r and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
            raise UserError(
                "train.peft (LoRA) merges the adapter into whole weights, which FSDP and DeepSpeed ZeRO-3 shard: "
                "launch LoRA with DDP (configs/accelerate/ddp.yaml) or torchrun"
            )
        progress = quiet_console(trainer, "train")
        world_batch = world_batch_size(cfg, trainer.accelerator.num_processes)
        _check_batch_layout(examples, world_batch)
        rows = examples
        if trainer.accelerator.num_processes > 1:  # else accelerate fills a short last step from the first rows
            rows = with_fillers(rows, world_batch)
        if cfg.loss == "rkl" and not sampler_is_policy:
            rows = with_policy_logprobs(trainer, rows)
        trainer.train_dataset = rows
        trainer.accelerator.wait_for_everyone()  # the main process has cleared another training's saved states
        resume = last_saved_state(saves) if saves else None
        try:
            trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
        finally:
            if progress is not None:
                progress.close()
        _save_on_every_rank(trainer, Path(output_dir))
    losses_logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainSummary(
        steps=trainer.state.global_step,
        final_loss=losses_logged[-1] if losses_logged else None,
        mean_loss=sum(losses_logged) / len(losses_logged) if losses_logged else None,
        seconds=time.perf_counter() - started,
        log_history=list(trainer.state.log_history),
        data_stats=dict(stats),
        resumed_from_step=None if resume is None else _saved_step(resume),
        provenance=provenance(
            trainer.args.device, torch.bfloat16 if bf16 else torch.float32, trainer.accelerator.num_processes
        ),
    )


def _adapters(cfg: TrainConfig) -> Any:
    """peft's LoRA config when `train.peft.r` asks for adapters (peft is imported only then), else None."""
    if not cfg.peft.r:
        return None
    from pipeline.lora import lora_config

    return lora_config(cfg.peft)


def _save_on_every_rank(trainer: SFTTrainer, output_dir: Path) -> None:
    """Save the checkpoint into a temporary folder the main process then puts at `output_dir`. Every rank
    takes part: FSDP and ZeRO-3 gather the sharded weights from all ranks, and the main process writes."""
    main = trainer.is_world_process_zero()
    trainer.accelerator.wait_for_everyone()
    with atomic_dir(output_dir) if main else nullcontext() as folder:
        (shared,) = broadcast_object_list([str(folder) if main else None])  # the main process's folder
        _save_checkpoint(trainer, Path(shared))
        trainer.accelerator.wait_for_everyone()  # every rank is done before the folder is swapped in


def _save_checkpoint(trainer: SFTTrainer, folder: Path) -> None:
    """What rollout and the next round load: the trained model, merged with its LoRA adapter if it has one."""
    if not trainer.train_config.peft.r:
        trainer.save_model(str(folder))
        return
    from pipeline.lora import save_merged

    if trainer.is_world_process_zero():  # save_model keeps the other ranks from writing; the merge must too
        save_merged(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, folder)


def _check_batch_layout(examples: datasets.Dataset, world_batch: int) -> None:
    """The weights were normalized per optimizer batch: refuse examples cut for another batch size."""
    index = arrow_column(examples, "batch_index").to_numpy()
    if (index != np.arange(len(index)) // world_batch).any():
        raise ValueError(
            f"examples were built for another optimizer batch size than this trainer's {world_batch} rows "
            "(per-device batch x gradient accumulation x processes): call build_examples with world_batch="
            f"{world_batch}"
        )
