"""Playing episodes: many games at once, one batched policy call per step, envs in worker processes.

Per iteration: resets for free slots are submitted first, so the 1–3 s PDDL translation overlaps the
policy's generation for the active episodes; then every active episode's action is submitted and all
results are collected. New episodes join at the next step boundary and finished ones drop out, so the
batch composition, and with a per-step seed the sampled tokens, depend only on the episode list:
replaying the same list gives the same turns.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.config import GAMES_PER_WORKER
from pipeline.envs.actions import NOTHING_HAPPENS, UNFINISHED, parse_action
from pipeline.envs.alfworld_env import EnvFailure, EnvStep
from pipeline.envs.games import Game
from pipeline.envs.listing import list_actions
from pipeline.envs.memory import Memory, recall
from pipeline.envs.prompts import PromptRenderer, TurnView
from pipeline.envs.workers import EnvPool
from pipeline.policies import Policy, TurnRequest
from pipeline.seeding import derive_seed


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to play: a game and which sample of it."""

    game: Game
    sample: int

    @property
    def episode_id(self) -> str:
        return f"{self.game.game_id}#{self.sample}"


@dataclass
class Episode:
    """An episode in progress, then its record: one dict per turn, plus the outcome."""

    spec: EpisodeSpec
    task: str = ""
    observation: str = ""
    admissible: list[str] = field(default_factory=list)
    expert_action: str | None = None  # only when the pool runs an expert (EnvPool(expert=...))
    turns: list[dict] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)
    memory: Memory | None = None  # what the memory line shows, kept up to date when `env.memory` is on
    won: bool = False
    finished: bool = False
    error: str | None = None

    def request(self, prompt_ids: list[int]) -> TurnRequest:
        """What a policy gets to answer this episode's next turn."""
        return TurnRequest(
            prompt_ids, self.spec.game, len(self.turns), tuple(self.admissible), self.expert_action, self.observation
        )

    def view(self, history: int, max_steps: int) -> TurnView:
        recent = [(t["observation"], t["action"]) for t in self.turns[-history:]] if history else []
        line = self.memory.render() if self.memory is not None else None
        return TurnView(
            self.task, len(self.turns), max_steps, tuple(recent), self.observation, tuple(self.admissible), line
        )


@dataclass
class PlayTimings:
    """Where the wall time went: the policy, waiting on environments, everything else is ours."""

    policy_seconds: float = 0.0
    env_seconds: float = 0.0
    wall_seconds: float = 0.0
    steps: int = 0


class EpisodeRunner:
    """Plays lists of episodes with one policy, one prompt renderer and one worker pool."""

    def __init__(
        self,
        policy: Policy,
        renderer: PromptRenderer,
        pool: EnvPool,
        *,
        batch_size: int,
        max_steps: int,
        history: int,
        think: bool,
        listing: str = "sorted",
        memory: bool = False,
    ) -> None:
        self.policy = policy
        self.renderer = renderer
        self.pool = pool
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.history = history
        self.think = think
        self.listing = listing
        self.memory = memory
        self.timings = PlayTimings()

    def play(
        self, specs: list[EpisodeSpec], seed: int, on_finished: Callable[[Episode], None] | None = None
    ) -> list[Episode]:
        """Play every spec to the end; returns the episodes in the order of `specs`."""
        start = time.perf_counter()
        waiting = deque(enumerate(specs))
        slots: dict[int, Episode] = {}
        order: dict[int, int] = {}  # slot -> index in specs
        done: dict[int, Episode] = {}
        step = 0
        while waiting or slots:
            for slot in range(self.batch_size):
                if slot not in order and waiting:
                    order[slot], spec = waiting.popleft()
                    self.pool.submit_reset(slot, str(spec.game.path))
            # rows in slot order, not in the order the workers happened to answer
            active = {slot: slots[slot] for slot in sorted(slots) if not slots[slot].finished}
            actions = self._act(active, derive_seed(seed, step)) if active else {}
            for slot, action in actions.items():
                self.pool.submit_step(slot, action)
            for slot, result in self.pool.collect().items():
                if slot in slots:
                    self._record_step(slots[slot], result)
                else:
                    slots[slot] = self._start(specs[order[slot]], result)
            for slot in [s for s, ep in slots.items() if ep.finished]:
                index = order.pop(slot)
                done[index] = slots.pop(slot)
                if on_finished:
                    on_finished(done[index])
            step += 1
        self.timings.env_seconds = self.pool.wait_seconds
        self.timings.wall_seconds += time.perf_counter() - start
        return [done[i] for i in range(len(specs))]

    def _start(self, spec: EpisodeSpec, result: EnvStep | EnvFailure) -> Episode:
        if isinstance(result, EnvFailure):
            return Episode(spec, finished=True, error=result.error)
        return Episode(
            spec,
            task=result.task,
            observation=result.observation,
            admissible=list_actions(result.admissible, self.listing, spec.episode_id, 0),
            expert_action=result.expert_action,
            memory=recall([result.observation]) if self.memory else None,
        )

    def _act(self, active: dict[int, Episode], seed: int) -> dict[int, str]:
        """One batched policy call; the parsed turn waits in `ep.turns` for the env's feedback."""
        rendered = {slot: self.renderer.render(ep.view(self.history, self.max_steps)) for slot, ep in active.items()}
        requests = [active[slot].request(ids) for slot, (_, ids) in rendered.items()]
        tick = time.perf_counter()
        responses = self.policy.act(requests, seed)
        self.timings.policy_seconds += time.perf_counter() - tick
        self.timings.steps += len(requests)
        actions = {}
        for (slot, (prompt_text, prompt_ids)), response in zip(rendered.items(), responses, strict=True):
            ep = active[slot]
            parsed = UNFINISHED if response.truncated else parse_action(response.text, self.think)
            ep.turns.append(
                {
                    "turn": len(ep.turns),
                    "prompt_text": prompt_text,
                    "prompt_ids": prompt_ids,
                    "response_text": response.text,
                    "response_ids": response.ids,
                    "sampler_logprobs": response.logprobs,
                    "action": parsed.action,
                    "format_ok": parsed.format_ok,
                    "truncated": response.truncated,
                    "admissible": parsed.action in ep.admissible,
                    "observation": ep.observation,
                    "admissible_commands": list(ep.admissible),
                    "repeated": (ep.observation, parsed.action) in ep.seen,
                }
            )
            ep.seen.add((ep.observation, parsed.action))
            actions[slot] = parsed.action
        return actions

    def _record_step(self, ep: Episode, result: EnvStep | EnvFailure) -> None:
        turn = ep.turns[-1]
        if isinstance(result, EnvFailure):
            turn.update(feedback="", done=True, won=False, error=result.error)
            ep.error, ep.finished = result.error, True
            return
        ep.observation = result.observation
        if ep.memory is not None:
            ep.memory.read(result.observation)
        ep.admissible = list_actions(result.admissible, self.listing, ep.spec.episode_id, len(ep.turns))
        ep.expert_action = result.expert_action
        ep.won = result.won
        ep.finished = result.done or len(ep.turns) >= self.max_steps
        turn.update(feedback=result.observation, done=ep.finished, won=result.won, error=None)


PLAY_BATCH = 128


def is_invalid(turn: dict) -> bool:
    """A turn the environment could not use: malformed, not admissible, or "Nothing happens."."""
    return not turn["format_ok"] or not turn["admissible"] or turn["feedback"] == NOTHING_HAPPENS


def play_games(
    policy: Policy,
    renderer: PromptRenderer,
    specs: list[EpisodeSpec],
    data_root: str,
    *,
    num_workers: int,
    games_per_worker: int = GAMES_PER_WORKER,
    max_steps: int,
    history: int,
    think: bool,
    seed: int = 0,
    expert: str | None = None,
    listing: str = "sorted",
    memory: bool = False,
    on_finished: Callable[[Episode], None] | None = None,
) -> list[Episode]:
    """Play a list of episodes with a fresh worker pool (prepare's corpus, DAgger plays and checks).

    At most PLAY_BATCH episodes are under way at once: each live game holds its engine state in a worker
    (1,008 at once grew each of two workers to 1.4 GB in prepare's DAgger play on the benchmark).
    `expert` runs that expert in the environments, for policies that need its action (`NoisyExpertPolicy`);
    `listing` is how prompts list the admissible actions (`pipeline.envs.listing`); `memory` adds the memory line
    to prompts, and the expert reads it too.
    """
    with EnvPool(num_workers, data_root, expert=expert, memory=memory, games_per_worker=games_per_worker) as pool:
        batch_size = min(len(specs), PLAY_BATCH)
        runner = EpisodeRunner(
            policy,
            renderer,
            pool,
            batch_size=batch_size,
            max_steps=max_steps,
            history=history,
            think=think,
            listing=listing,
            memory=memory,
        )
        return runner.play(specs, seed=seed, on_finished=on_finished)
