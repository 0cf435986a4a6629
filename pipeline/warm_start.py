"""Warm starts for the tiny default setting: a teacher that can play, a student that can answer.

Real teachers and students are instruct models that already emit well-formed actions; the tiny
offline models start from random weights. `prepare` therefore fine-tunes the tiny teacher with the
`sft` loss on expert walkthroughs of the rollout games until it wins most of them, and gives the
student a much briefer SFT so it produces `<action>…</action>` answers without knowing the games.

A teacher that saw only the walkthroughs' states is no teacher for a student: on-policy distillation
asks it about the student's states, which leave the expert path from the first mistake on, and there
a memorizer's advice is noise. So the teacher also learns from DAgger-style episodes
(`teacher_dagger_samples`): the planner plays with random detours, and every state it passes through
is labelled with the planner's action from that state. The student gets the walkthroughs only.
Each model records what it got in `_sft.json`; a model that has one is left alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.backends.factory import load_hf_model
from pipeline.backends.hf import HFGenerator, load_tokenizer
from pipeline.config import Config, TrainConfig
from pipeline.envs.prompts import PromptRenderer
from pipeline.episodes import EpisodeSpec, play_games
from pipeline.evaluation import turn_rows
from pipeline.play import plan_episodes
from pipeline.policies import ExpertPolicy, LMPolicy, NoisyPlannerPolicy, Policy
from pipeline.train_data import build_examples
from pipeline.trainer import train_student

SFT_RECORD = "_sft.json"


def sft_record(model: str | Path) -> dict[str, Any] | None:
    path = Path(model) / SFT_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def play(config: Config, policy: Policy, tokenizer, specs: list[EpisodeSpec], data_root: Path, plan: bool = False):
    return play_games(
        policy,
        PromptRenderer(tokenizer, config.env.think),
        specs,
        str(data_root),
        num_workers=config.env.num_workers,
        max_steps=config.env.max_steps,
        history=config.env.history,
        think=config.env.think,
        seed=config.seed,
        plan=plan,
    )


def expert_rows(config: Config, specs: list[EpisodeSpec], data_root: Path, tokenizer) -> list[dict[str, Any]]:
    """Turn rows of the expert replaying each game's walkthrough, in the rollout's own format."""
    episodes = play(config, ExpertPolicy(tokenizer, config.env.think), tokenizer, specs, data_root)
    base = {"run": "prepare", "round": 0, "policy": "expert"}
    return [row for ep in episodes for row in turn_rows(ep, base)]


def dagger_rows(config: Config, specs: list[EpisodeSpec], data_root: Path, tokenizer) -> list[dict[str, Any]]:
    """(prompt, planner action) rows from `teacher_dagger_samples` noisy-planner episodes of each game."""
    samples = config.prepare.teacher_dagger_samples
    if samples == 0:
        return []
    policy = NoisyPlannerPolicy(tokenizer, config.env.think, config.prepare.teacher_dagger_epsilon)
    noisy = [EpisodeSpec(spec.game, sample) for spec in specs for sample in range(samples)]
    play(config, policy, tokenizer, noisy, data_root, plan=True)
    return [
        {"episode_id": f"dagger#{index}", "turn": 0, "prompt_ids": prompt, "response_ids": response.ids}
        for index, (prompt, response) in enumerate(policy.demonstrations)
    ]


def greedy_success(config: Config, model: str, specs: list[EpisodeSpec], data_root: Path) -> float:
    tokenizer = load_tokenizer(model)
    policy = LMPolicy("check", HFGenerator(load_hf_model(config, model), tokenizer), config.sampling, temperature=0.0)
    episodes = play(config, policy, tokenizer, specs, data_root)
    return sum(ep.won for ep in episodes) / len(episodes)


def sft_in_place(config: Config, model: str, rows: list[dict[str, Any]], epochs: float, learning_rate: float) -> int:
    """Cross-entropy on every turn; the checkpoint folder is replaced atomically. Returns the step count."""
    settings = TrainConfig(
        loss="sft",
        turn_selection=False,
        confidence="none",
        normalize=False,
        learning_rate=learning_rate,
        epochs=epochs,
        per_device_batch_size=config.prepare.sft_batch_size,
        logging_steps=10,
        annotations="",
    )
    examples, stats = build_examples(rows, None, settings, world_batch=settings.per_device_batch_size, seed=config.seed)
    summary = train_student(
        model, examples, stats, settings, Path(model), seed=config.seed, threads=config.runtime.threads or None
    )
    return summary.steps


def warm_start_models(config: Config) -> dict[str, dict[str, Any] | None]:
    """SFT the teacher and the student once each, as `config.prepare` says; returns their records.

    Both learn from the expert turns of the rollout games (one episode per game); the teacher also
    from the DAgger rows, and the student gets far fewer epochs, so it learns the answer format and
    little of the games.
    """
    settings = config.prepare
    plan = {
        "teacher": (settings.teacher_sft_epochs, settings.teacher_sft_learning_rate),
        "student": (settings.student_sft_epochs, settings.student_sft_learning_rate),
    }
    models = {name: getattr(config.models, name) for name in plan}
    todo = [name for name, (epochs, _) in plan.items() if epochs > 0 and sft_record(models[name]) is None]
    if todo:
        data_root, specs = plan_episodes(config, replace(config.rollout, samples_per_game=1))
        tokenizer = load_tokenizer(config.models.student)
        rows = expert_rows(config, specs, data_root, tokenizer)
        dagger = dagger_rows(config, specs, data_root, tokenizer) if "teacher" in todo else []
        for name in todo:
            model = models[name]
            epochs, learning_rate = plan[name]
            extra = dagger if name == "teacher" else []
            tick = time.perf_counter()
            steps = sft_in_place(config, model, rows + extra, epochs, learning_rate)
            record = {
                "turns": len(rows),
                "dagger_turns": len(extra),
                "epochs": epochs,
                "learning_rate": learning_rate,
                "steps": steps,
                "seconds": round(time.perf_counter() - tick, 1),
                "greedy_success": greedy_success(config, model, specs, data_root),
                "games": len(specs),
            }
            write_json(Path(model) / SFT_RECORD, record)
    return {name: sft_record(model) for name, model in models.items()}
