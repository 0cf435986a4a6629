"""Warm starts for the tiny default setting: a teacher that can play, a student that can answer.

Real teachers and students are instruct models that already emit well-formed actions; the tiny
offline models start from random weights. `prepare` therefore fine-tunes the tiny teacher with the
`sft` loss until it wins most of the rollout games, and gives the student a much shorter SFT that
leaves it winning few of them.

Both learn from the expert walkthroughs plus DAgger-style episodes: the planner plays with random
detours, and every state it passes through is labelled with the planner's action from that state.
A teacher that saw only the walkthroughs' states is no teacher for a student: on-policy
distillation asks it about the student's states, which leave the expert path from the first
mistake on, and there a memorizer's advice is noise. A student that saw only the walkthroughs is
no pupil either: it memorizes them (keyed on the task and the step), and advice about the states
it strays into blurs that memory rather than adding to it. Measured on the mini games, such a
student lost success after one round in every setting we tried, even with the planner's own
labels, while one warm-started on DAgger episodes went from 0-8% to 33-38% in three rounds.
Each model records what it got in `_sft.json`; a model that has one is left alone. The record
includes the model's next-action accuracy on DAgger states of the eval splits' games
(`pipeline/action_probe.py`): on held-out games, whether the warm start transfers, per verb.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.action_probe import accuracy_by_verb, action_verb, greedy_matches
from pipeline.atomic import write_json
from pipeline.backends.factory import load_hf_model
from pipeline.backends.hf import HFGenerator, load_tokenizer
from pipeline.config import Config, TrainConfig
from pipeline.envs.games import select_games
from pipeline.envs.prompts import PromptRenderer
from pipeline.episodes import EpisodeSpec, play_games
from pipeline.errors import UserError
from pipeline.evaluation import turn_rows
from pipeline.play import plan_episodes, play_temperature
from pipeline.policies import ExpertLabelledPolicy, ExpertPolicy, LMPolicy, NoisyExpertPolicy, Policy
from pipeline.train_data import build_examples
from pipeline.trainer import TrainSummary, train_student

SFT_RECORD = "_sft.json"


def sft_record(model: str | Path) -> dict[str, Any] | None:
    path = Path(model) / SFT_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def play(
    config: Config,
    policy: Policy,
    tokenizer,
    specs: list[EpisodeSpec],
    data_root: Path,
    expert: str | None = None,
    progress=None,
):
    """Play `specs` with prepare's settings; `progress` (a ProgressSink) is told each finished episode."""
    if progress is not None:
        progress.begin(len(specs))
    return play_games(
        policy,
        PromptRenderer(tokenizer, config.env.think),
        specs,
        str(data_root),
        num_workers=config.env.num_workers,
        games_per_worker=config.env.games_per_worker,
        max_steps=config.env.max_steps,
        history=config.env.history,
        think=config.env.think,
        seed=config.seed,
        expert=expert,
        listing=config.env.listing,
        memory=config.env.memory,
        on_finished=progress,
    )


def expert_rows(config: Config, specs: list[EpisodeSpec], data_root: Path, tokenizer) -> list[dict[str, Any]]:
    """Turn rows of the expert replaying each game's walkthrough, in the rollout's own format."""
    episodes = play(config, ExpertPolicy(tokenizer, config.env.think), tokenizer, specs, data_root)
    base = {"run": "prepare", "round": 0, "policy": "expert"}
    return [row for ep in episodes for row in turn_rows(ep, base)]


def dagger_rows(
    config: Config, specs: list[EpisodeSpec], data_root: Path, tokenizer, samples: int, progress=None
) -> list[dict[str, Any]]:
    """(prompt, expert action) rows from `samples` noisy-expert episodes of each game (`prepare.dagger_expert`)."""
    if samples == 0:
        return []
    policy = NoisyExpertPolicy(tokenizer, config.env.think, config.prepare.dagger_epsilon)
    noisy = [EpisodeSpec(spec.game, sample) for spec in specs for sample in range(samples)]
    play(config, policy, tokenizer, noisy, data_root, expert=config.prepare.dagger_expert, progress=progress)
    return demonstration_rows(policy.demonstrations, "dagger")


def demonstration_rows(demonstrations, prefix: str) -> list[dict[str, Any]]:
    """SFT rows of (prompt ids, expert response) pairs, one episode id each."""
    return [
        {"episode_id": f"{prefix}#{index}", "turn": 0, "prompt_ids": prompt, "response_ids": response.ids}
        for index, (prompt, response) in enumerate(demonstrations)
    ]


def learner_rows(
    config: Config, model: str, specs: list[EpisodeSpec], data_root: Path, tokenizer, iteration: int, progress=None
) -> list[dict[str, Any]]:
    """(prompt, expert action) rows of the states `model` reaches itself: one episode per game at the eval
    temperature, each state labelled by `prepare.dagger_expert` (DAgger iteration `iteration`, from 1; its
    rows get episode ids of their own, as they join the earlier iterations' in one SFT set)."""
    generator = HFGenerator(load_hf_model(config, model), tokenizer)
    learner = LMPolicy("learner", generator, config.sampling, play_temperature(config, config.eval))
    policy = ExpertLabelledPolicy(learner, tokenizer, config.env.think)
    play(config, policy, tokenizer, specs, data_root, expert=config.prepare.dagger_expert, progress=progress)
    return demonstration_rows(policy.demonstrations, "own" if iteration == 1 else f"own{iteration}")


GREEDY_CHECK_GAMES = 24  # a quick look, balanced over task types; eval measures the splits properly


def greedy_success(config: Config, model: str, specs: list[EpisodeSpec], data_root: Path) -> float:
    """Greedy success on (at most GREEDY_CHECK_GAMES of) the games the model was warm-started on."""
    specs = [EpisodeSpec(game, 0) for game in select_games([spec.game for spec in specs], GREEDY_CHECK_GAMES)]
    tokenizer = load_tokenizer(model)
    policy = LMPolicy("check", HFGenerator(load_hf_model(config, model), tokenizer), config.sampling, temperature=0.0)
    episodes = play(config, policy, tokenizer, specs, data_root)
    return sum(ep.won for ep in episodes) / len(episodes)


def heldout_states(config: Config, tokenizer, progress_for=None) -> dict[str, list[dict[str, Any]]]:
    """{eval split: DAgger rows of one noisy-expert episode per eval game}: states no warm start trained on
    (unless the split is `train`), labelled by `prepare.dagger_expert`."""
    states = {}
    for split in config.eval.splits:
        data_root, specs = plan_episodes(config, replace(config.eval, splits=[split], samples_per_game=1), 0)
        bar = progress_for(f"held-out states ({split})", "episodes") if progress_for else None
        states[split] = dagger_rows(config, specs, data_root, tokenizer, 1, bar)
    return states


def action_accuracy(config: Config, model: str, states: dict[str, list[dict[str, Any]]]) -> dict[str, dict]:
    """{split: {verb: [right, states]}}: how often greedy decoding would answer the expert's action."""
    tokenizer = load_tokenizer(model)
    lm = load_hf_model(config, model)
    accuracy = {}
    for split, rows in states.items():
        pairs = [(row["prompt_ids"], row["response_ids"]) for row in rows]
        verbs = [action_verb(tokenizer, response) for _, response in pairs]
        accuracy[split] = accuracy_by_verb(verbs, greedy_matches(lm, pairs, tokenizer.pad_token_id))
    return accuracy


def sft_in_place(
    config: Config, model: str, rows: list[dict[str, Any]], epochs: float, learning_rate: float
) -> TrainSummary:
    """Cross-entropy on every turn; the checkpoint folder is replaced atomically."""
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
    return train_student(
        model, examples, stats, settings, Path(model), seed=config.seed, threads=config.runtime.threads or None
    )


def prompt_settings(config: Config) -> dict[str, Any]:
    """The settings that shape the prompts a warm start learns from (and any later prompt must match)."""
    env = config.env
    return {
        "history": env.history,
        "max_steps": env.max_steps,
        "think": env.think,
        "listing": env.listing,
        "memory": env.memory,
    }


def recipe_settings(config: Config, name: str) -> dict[str, Any]:
    """{setting: value} of what model `name`'s warm-start weights depend on besides the prompts: its shape,
    data and schedule, and, for a teacher that plays its own DAgger episodes, how it decodes them. (Not the
    seed: a sweep's seeds share one warm start, and a seed changes the draw, not the recipe.)"""
    settings = config.prepare
    own = {
        "shape": getattr(settings, f"{name}_shape"),
        "sft_epochs": getattr(settings, f"{name}_sft_epochs"),
        "sft_learning_rate": getattr(settings, f"{name}_sft_learning_rate"),
        "dagger_samples": getattr(settings, f"{name}_dagger_samples"),
    }
    recipe = {f"prepare.{name}_{key}": value for key, value in own.items()}
    for key in ("dagger_epsilon", "dagger_expert", "walkthroughs", "sft_batch_size"):
        recipe[f"prepare.{key}"] = getattr(settings, key)
    recipe |= {"data.source": config.data.source, "rollout.splits": config.rollout.splits}
    if name == "teacher":
        recipe["prepare.teacher_dagger_iterations"] = settings.teacher_dagger_iterations
        if settings.teacher_dagger_iterations > 0:  # it plays its own episodes: how it decodes them counts
            recipe |= {
                "prepare.teacher_iteration_epochs": settings.teacher_iteration_epochs,
                "eval.temperature": play_temperature(config, config.eval),
                "sampling.admissible_only": config.sampling.admissible_only,
            }
    return recipe


def _learned_prompt(recorded: dict[str, Any]) -> dict[str, Any]:
    """A record's prompt settings under today's names: `go_to_order` (removed in #28) was the listing; records
    from before the memory line existed were made without it."""
    learned = {key: value for key, value in recorded.items() if key != "go_to_order"}
    return {"listing": recorded.get("go_to_order", "sorted"), "memory": False, **learned}


def _refuse_another_warm_start(config: Config, name: str, model: str, record: dict[str, Any] | None) -> None:
    """A model warm-started on other prompts or another recipe would be kept as if it were this config's: say
    so instead. (Records written before `prompt` or `recipe` was recorded are taken as they are; records written
    before any listing setting existed were made with the engine's sorted order, the only one there was; records
    of the removed `go_to_order` setting name their listing under that key.)"""
    if record is None:
        return
    differ = []
    if "prompt" in record:
        learned, wanted = _learned_prompt(record["prompt"]), prompt_settings(config)
        differ += [f"env.{key}={learned[key]}" for key in wanted if learned.get(key) != wanted[key]]
    if "recipe" in record:
        learned, wanted = record["recipe"], recipe_settings(config, name)
        differ += [f"{key}={learned.get(key)}" for key in wanted if learned.get(key) != wanted[key]]
    if differ:
        raise UserError(
            f"{model} was warm-started with {', '.join(differ)}, not this config's: run `sage-opd prepare --force` "
            "to rebuild it, or point models.* at another folder"
        )


def warm_start_models(config: Config, progress_for=None) -> dict[str, dict[str, Any] | None]:
    """SFT the teacher and the student once each, as `config.prepare` says; returns their records.

    `progress_for(label, unit)` may return a progress sink for the DAgger plays (the CLI's bars).

    Both learn from the expert turns of the rollout games (one episode per game) and from their own
    number of DAgger episodes per game; the student gets fewer epochs, so it wins few games.
    """
    settings = config.prepare
    plan = {
        "teacher": (settings.teacher_sft_epochs, settings.teacher_sft_learning_rate, settings.teacher_dagger_samples),
        "student": (settings.student_sft_epochs, settings.student_sft_learning_rate, settings.student_dagger_samples),
    }
    models = {name: getattr(config.models, name) for name in plan}
    for name, model in models.items():
        _refuse_another_warm_start(config, name, model, sft_record(model))
    todo = [name for name, (epochs, _, _) in plan.items() if epochs > 0 and sft_record(models[name]) is None]
    if todo:
        data_root, specs = plan_episodes(config, replace(config.rollout, num_games=0, samples_per_game=1), 0)
        tokenizer = load_tokenizer(config.models.student)
        rows = expert_rows(config, specs, data_root, tokenizer) if settings.walkthroughs else []
        dagger: dict[int, list[dict[str, Any]]] = {}  # by episodes per game: equal counts share one play
        heldout: dict[str, list[dict[str, Any]]] | None = None
        for name in todo:
            model = models[name]
            epochs, learning_rate, samples = plan[name]
            if samples not in dagger:
                bar = progress_for(f"DAgger episodes ({samples} per game)", "episodes") if progress_for else None
                dagger[samples] = dagger_rows(config, specs, data_root, tokenizer, samples, bar)
            extra = dagger[samples]
            tick = time.perf_counter()
            first = sft_in_place(config, model, rows + extra, epochs, learning_rate)
            steps = first.steps
            own: list[dict[str, Any]] = []
            own_counts: list[int] = []
            for iteration in range(1, 1 + (settings.teacher_dagger_iterations if name == "teacher" else 0)):
                bar = progress_for(f"teacher's own episodes ({iteration})", "episodes") if progress_for else None
                learned = learner_rows(config, model, specs, data_root, tokenizer, iteration, bar)
                own, own_counts = own + learned, [*own_counts, len(learned)]
                more = settings.teacher_iteration_epochs
                steps += sft_in_place(config, model, rows + extra + own, more, learning_rate).steps
            record = {
                "turns": len(rows),
                "dagger_turns": len(extra),
                "own_turns": len(own),
                "own_turns_per_iteration": own_counts,
                "epochs": epochs,
                "learning_rate": learning_rate,
                "steps": steps,
                "seconds": round(time.perf_counter() - tick, 1),
                "greedy_success": greedy_success(config, model, specs, data_root),
                "games": len(specs),
                "greedy_games": min(len(specs), GREEDY_CHECK_GAMES),
                "prompt": prompt_settings(config),
                "recipe": recipe_settings(config, name),
                "provenance": first.provenance,
            }
            if heldout is None:
                heldout = heldout_states(config, tokenizer, progress_for)
            record["action_accuracy"] = action_accuracy(config, model, heldout)
            write_json(Path(model) / SFT_RECORD, record)
    return {name: sft_record(model) for name, model in models.items()}
