"""One real ALFWorld text game (alfworld 0.4.2 on textworld 1.7), with the text cleaned for prompts.

The engine's first observation carries a banner and the task sentence; we split those apart so the
prompt can show the task once and the observation on its own. `help` is admissible in the engine but
useless to an agent, so it never reaches a prompt.

With `expert=` set, every reset and step also names an expert action from *any* state, not only from the
states of the stored walkthrough, which is what a DAgger-style expert needs: `planner` runs the Fast
Downward planner (textworld's `policy_commands`, ~50 ms a step on the mini games; it knows where every
object is), `search` asks the searcher of `search_expert` (it acts on what the agent can know). With
`memory=True` the searcher also reads the episode's own observations as the prompt's memory line does.

The admissible actions come back in the engine's order (by name); how a prompt lists them is the
episode's business (`pipeline.envs.listing`), so no game ever reorders them by what the task needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import DAGGER_EXPERTS as EXPERTS
from pipeline.config import SEARCHING_EXPERTS as SEARCHERS
from pipeline.envs.memory import Memory
from pipeline.envs.search_expert import SearchTask, WorldState, search_action

BANNER = "-= Welcome to TextWorld, ALFRED! =-"
HIDDEN_COMMANDS = frozenset({"help"})


@dataclass
class EnvStep:
    """What the environment says after a reset or a step."""

    observation: str
    admissible: list[str]
    won: bool
    done: bool
    task: str = ""
    expert_action: str | None = None  # the expert's next command, when the game was started with an expert


@dataclass
class EnvFailure:
    """The game raised (or its worker died): the episode ends as failed with this message."""

    error: str


def split_task(text: str) -> tuple[str, str]:
    """Split the first observation into (observation without banner, task sentence)."""
    text = text.replace(BANNER, "").strip()
    head, sep, tail = text.rpartition("Your task is to:")
    if not sep:
        return text, ""
    return head.strip(), tail.strip().rstrip(".")


class AlfWorldGame:
    """A single game in the real engine. Not thread-safe; lives inside one worker process."""

    def __init__(self, gamefile: str, expert: str | None = None, memory: bool = False) -> None:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

        if expert not in (None, *EXPERTS):
            raise ValueError(f"expert must be one of {', '.join(EXPERTS)} or None, not {expert!r}")
        infos = textworld.EnvInfos(
            won=True,
            admissible_commands=True,
            extras=["gamefile"],
            policy_commands=expert == "planner",
            facts=expert in SEARCHERS,
        )
        self._env = textworld.start(gamefile, request_infos=infos, wrappers=[AlfredDemangler(), AlfredInfos])
        self._expert = expert
        self._task = SearchTask.of_game(gamefile) if expert in SEARCHERS else None
        self._memory = Memory() if memory and expert in SEARCHERS else None

    def reset(self) -> EnvStep:
        state = self._env.reset()
        observation, task = split_task(state["feedback"])
        self._remember(observation)
        expert_action = self._next_command(state)
        return EnvStep(observation, self._admissible(state), bool(state["won"]), False, task, expert_action)

    def step(self, action: str) -> EnvStep:
        state, _score, done = self._env.step(action)
        won = bool(state["won"])
        feedback, admissible = state["feedback"].strip(), self._admissible(state)
        self._remember(feedback)
        return EnvStep(feedback, admissible, won, bool(done) or won, expert_action=self._next_command(state))

    def _next_command(self, state) -> str | None:
        """The expert's action from this state (None without an expert, or once the game is won)."""
        if self._expert is None or state["won"]:
            return None
        if self._expert in SEARCHERS:
            every = self._expert == "sweep"
            return search_action(self._task, WorldState(state["facts"]), every=every, memory=self._memory)
        commands = state["policy_commands"]
        return commands[0] if commands else None

    def _remember(self, observation: str) -> None:
        """Keep the searcher's memory as the episode's prompts build theirs: from the same observations."""
        if self._memory is not None:
            self._memory.read(observation)

    def close(self) -> None:
        self._env.close()

    @staticmethod
    def _admissible(state) -> list[str]:
        return [cmd for cmd in state["admissible_commands"] if cmd not in HIDDEN_COMMANDS]
