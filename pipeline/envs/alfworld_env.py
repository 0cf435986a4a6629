"""One real ALFWorld text game (alfworld 0.4.2 on textworld 1.7), with the text cleaned for prompts.

The engine's first observation carries a banner and the task sentence; we split those apart so the
prompt can show the task once and the observation on its own. `help` is admissible in the engine but
useless to an agent, so it never reaches a prompt.

With `expert=` set, every reset and step also names an expert action from *any* state, not only from the
states of the stored walkthrough, which is what a DAgger-style expert needs: `planner` runs the Fast
Downward planner (textworld's `policy_commands`, ~50 ms a step on the mini games; it knows where every
object is), `search` asks the memoryless searcher of `search_expert` (it acts on what the agent can know).

`go_to_order` decides how the `go to` actions are listed. The engine sorts them by name (`sorted`).
`from_here` starts the list at the receptacle after the one the agent stands at, in that sorted order,
and wraps around, so the list is the rest of a tour of the room from here. Why: an agent that sees
only the current turn can then sweep a room by taking the first `go to` that suits it, where the
sorted list would make it find the gap left by its own receptacle and the name after it (with
"Nothing happens." on screen, nothing else says where it stands). `next_last` lists that tour backwards
at the end of the list, and `task_last` moves the actions whose object the task names after it.
`deliver_last` also moves the `go to` of the task's receptacles: first of the block while the agent
searches, last while it holds the task's object, then the device its verb needs and what it does there.
Measured on the mini benchmark's unseen rooms: README.md, the mini benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import DAGGER_EXPERTS as EXPERTS
from pipeline.config import GO_TO_ORDERS
from pipeline.envs.search_expert import SearchTask, WorldState, kind, search_action

SEARCHERS = ("search", "sweep")  # the experts that act on the state's facts (pipeline/envs/search_expert.py)
GO_TO = "go to "
BANNER = "-= Welcome to TextWorld, ALFRED! =-"
HIDDEN_COMMANDS = frozenset({"help"})
# The device a task sentence's transformation word needs ("put a hot egg in fridge", "heat some egg and put it
# in fridge"): ALFWorld's three, the same as the searching expert's (`search_expert.TRANSFORM_VERBS`).
DEVICE_OF_WORD = {"clean": "sinkbasin", "heat": "microwave", "hot": "microwave", "cool": "fridge"}
HOLDING_VERBS = frozenset({"move", "examine", "clean", "heat", "cool"})  # commands on an object in hand


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

    def __init__(self, gamefile: str, expert: str | None = None, go_to_order: str = "sorted") -> None:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

        if expert not in (None, *EXPERTS):
            raise ValueError(f"expert must be one of {', '.join(EXPERTS)} or None, not {expert!r}")
        if go_to_order not in GO_TO_ORDERS:
            raise ValueError(f"go_to_order must be one of {', '.join(GO_TO_ORDERS)}, not {go_to_order!r}")
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
        self._go_to_order = go_to_order
        self._receptacles: list[str] = []  # every `go to` target, from the reset (the agent stands at none)
        self._task_words: frozenset[str] = frozenset()  # the words of the task sentence, from the reset

    def reset(self) -> EnvStep:
        state = self._env.reset()
        self._receptacles = sorted(
            cmd.removeprefix(GO_TO) for cmd in state["admissible_commands"] if cmd.startswith(GO_TO)
        )
        observation, task = split_task(state["feedback"])
        self._task_words = frozenset(task.split())
        expert_action = self._next_command(state)
        return EnvStep(observation, self._admissible(state), bool(state["won"]), False, task, expert_action)

    def step(self, action: str) -> EnvStep:
        state, _score, done = self._env.step(action)
        won = bool(state["won"])
        feedback, admissible = state["feedback"].strip(), self._admissible(state)
        return EnvStep(feedback, admissible, won, bool(done) or won, expert_action=self._next_command(state))

    def _next_command(self, state) -> str | None:
        """The expert's action from this state (None without an expert, or once the game is won)."""
        if self._expert is None or state["won"]:
            return None
        if self._expert in SEARCHERS:
            return search_action(self._task, WorldState(state["facts"]), every=self._expert == "sweep")
        commands = state["policy_commands"]
        return commands[0] if commands else None

    def close(self) -> None:
        self._env.close()

    def _admissible(self, state) -> list[str]:
        commands = [cmd for cmd in state["admissible_commands"] if cmd not in HIDDEN_COMMANDS]
        if self._go_to_order == "from_here":
            return tour_from_here(commands, self._receptacles)
        if self._go_to_order == "next_last":
            return next_last(commands, self._receptacles)
        if self._go_to_order == "task_last":
            return task_last(commands, self._receptacles, self._task_words)
        if self._go_to_order == "deliver_last":
            return deliver_last(commands, self._receptacles, self._task_words)
        return commands


def tour_from_here(commands: list[str], receptacles: list[str]) -> list[str]:
    """`commands` with their `go to` block reordered to start after the receptacle the agent stands at
    (the one of `receptacles`, sorted, that no `go to` names) and wrap around; unchanged where the agent
    stands at none. Every other command keeps its place."""
    targets = {cmd.removeprefix(GO_TO) for cmd in commands if cmd.startswith(GO_TO)}
    missing = [name for name in receptacles if name not in targets]
    if len(missing) != 1:
        return commands
    here = missing[0]
    tour = [name for name in receptacles if name > here] + [name for name in receptacles if name < here]
    block = iter(GO_TO + name for name in tour if name in targets)
    return [next(block) if cmd.startswith(GO_TO) else cmd for cmd in commands]


def next_last(commands: list[str], receptacles: list[str]) -> list[str]:
    """The tour of `tour_from_here`, backwards, as the last block of `commands`: the next receptacle of the
    tour is the last action on screen, right before the question.

    Why: a tiny model trained from scratch does not learn to find the first `go to` of a list at a
    varying distance from its answer (it names a receptacle typical of the room instead); one a fixed
    few tokens back it copies. Probed on the mini benchmark (docs/mini-benchmark-history.md; one run each,
    1,080 steps on the same 8,640 sweep-labelled states): the tiny teacher's next action on valid_unseen
    states went from 45% to 58% with the states' prompts relisted this way."""
    toured = tour_from_here(commands, receptacles)
    go_tos = [cmd for cmd in toured if cmd.startswith(GO_TO)]
    return [cmd for cmd in toured if not cmd.startswith(GO_TO)] + go_tos[::-1]


def task_last(commands: list[str], receptacles: list[str], task_words: frozenset[str]) -> list[str]:
    """`next_last`, then the commands other than `go to` whose object (the word after the verb) is a word
    of the task sentence moved to the end, each block in its own order: for "put some book on dresser",
    "take book 1 from drawer 1" and "move book 1 to sofa 1", but not "take pen 1 from dresser 1".

    Why: on-policy, the tiny teacher's costliest mistakes were not finding the object named in the task
    among the actions on screen: it walked past the book it was looking for, took a saltshaker for a
    pepper shaker, then had to put it back (README, the mini benchmark). Listed last, the action the task
    needs is where `next_last` already taught it to look. Only the object counts: with the receptacle too,
    every `take` from the task's receptacle class would be listed last, the wrong objects with the right."""
    head, named = _split_named(commands, receptacles, task_words)
    return head + named


def _split_named(commands: list[str], receptacles: list[str], task_words: frozenset[str]) -> tuple[list, list]:
    """`next_last`'s list as (the rest, ending with the `go to` block; the commands naming a task word)."""
    ordered = next_last(commands, receptacles)
    named = [cmd for cmd in ordered if not cmd.startswith(GO_TO) and _object_of(cmd) in task_words]
    return [cmd for cmd in ordered if cmd not in named], named


def deliver_last(commands: list[str], receptacles: list[str], task_words: frozenset[str]) -> list[str]:
    """`task_last` with the `go to` of the task's receptacles (their class is a word of the task) moved:
    while the agent searches, to the front of the `go to` block, out of the tour's way; while it holds the
    task's object, to its end, by name backwards, followed by the device its transformation word needs,
    and then only the commands on the object that bring the task on (its transformation there, the lamp,
    putting it in the task's receptacle); examining it or putting it elsewhere go before the tour. For "put
    a hot cup in countertop", holding cup 1 at a drawer: "… go to countertop 2, go to countertop 1, go to
    microwave 1"; at the microwave: "… go to countertop 2, go to countertop 1, heat cup 1 with microwave 1".

    Why: on-policy on the unseen rooms, the tiny teacher (with `task_last`) carried the object it held
    elsewhere than the expert at 285 of 374 states (the task's receptacle of a heat task before the
    microwave, a sidetable for a cabinet) and searched the task's own receptacles, which the expert
    skips (README, the mini benchmark: 57% of valid_unseen won; 96% with this listing). The `go to` that
    comes last is now where the sweeping expert goes next: the next receptacle of the tour but the task's
    own while searching; the device until the object is transformed; at the device (whose `go to` is
    then not on screen) the task's first receptacle by name, once the observation says it is done. The
    agent holds the object when a command other than `take` acts on it ("move cup 1 to sinkbasin 1",
    "examine cup 1"); a word naming a receptacle class never counts as the object."""
    head, named = _split_named(commands, receptacles, task_words)
    classes = {kind(name) for name in receptacles}
    holding = any(_verb_of(cmd) in HOLDING_VERBS and _object_of(cmd) in task_words - classes for cmd in named)
    devices = {DEVICE_OF_WORD[word] for word in task_words if word in DEVICE_OF_WORD} if holding else set()
    places = [cmd for cmd in head if cmd.startswith(GO_TO) and kind(cmd.removeprefix(GO_TO)) in task_words | devices]
    rest = [cmd for cmd in head if cmd not in places]
    first_go_to = next((i for i, cmd in enumerate(rest) if cmd.startswith(GO_TO)), len(rest))
    if not holding:
        return rest[:first_go_to] + places + rest[first_go_to:] + named
    useful = [cmd for cmd in named if _delivers(cmd, task_words, devices)]
    idle = [cmd for cmd in named if cmd not in useful]
    # by name backwards (the expert's choice, the first by name, nearest the end), then the device after them
    places = sorted(sorted(places, reverse=True), key=lambda cmd: kind(cmd.removeprefix(GO_TO)) in devices)
    return rest[:first_go_to] + idle + rest[first_go_to:] + places + useful


def _delivers(command: str, task_words: frozenset[str], devices: set[str]) -> bool:
    """Whether a command on the held task object brings the task on: the task's own transformation, the
    lamp, or putting it in a receptacle of the task's class (not examining it or putting it back)."""
    verb = _verb_of(command)
    if verb == "move":
        return kind(command.rpartition(" to ")[2]) in task_words
    return verb == "use" or DEVICE_OF_WORD.get(verb) in devices


def _verb_of(command: str) -> str:
    """The command's first word ("move" in "move book 1 to shelf 1")."""
    return command.split(" ", 1)[0]


def _object_of(command: str) -> str:
    """The word after the verb ("book" in "take book 1 from drawer 1"); "" for a command of one word."""
    words = command.split()
    return words[1] if len(words) > 1 else ""
