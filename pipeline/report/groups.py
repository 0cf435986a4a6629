"""Which runs are seeds of one configuration: runs whose settings are equal once run name and seed are removed.

A group is what a paper calls a method: its seeds are the replicates that intervals are taken over. Its
name comes from the run names, as sweeps write them (`opd-s0`, `opd-s1` -> `opd`), so `--baseline opd`
names the group; where names would clash, a group is called by its first run. A run that records no
settings (see `loading.RunData.settings`) is a group of its own: nothing shows that it shares another's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.report.loading import RunData
from pipeline.shards import fingerprint

SEED_SUFFIX = re.compile(r"^(?P<stem>.+)-s\d+$")  # how sweeps name a configuration's seeds


@dataclass(frozen=True)
class Group:
    """A configuration's runs in report order, and their seeds (None where a run does not record one)."""

    name: str
    runs: tuple[str, ...]
    seeds: tuple[int | None, ...]


def group_runs(runs: Sequence[RunData]) -> list[Group]:
    """The runs' groups, in the order their first run was named."""
    members: dict[str, list[RunData]] = {}
    for run in runs:
        key = fingerprint(run.settings) if run.settings else f"run:{run.name}"
        members.setdefault(key, []).append(run)
    sets = list(members.values())
    return [
        Group(name, tuple(run.name for run in same), tuple(run.seed for run in same))
        for name, same in zip(_names(sets), sets, strict=True)
    ]


def several_seeds(groups: Sequence[Group]) -> bool:
    """Whether some group has several seeds: only then does a report aggregate over seeds."""
    return any(len(group.runs) > 1 for group in groups)


def find_group(groups: Sequence[Group], name: str) -> Group | None:
    """The group called `name`, else the group holding the run `name`."""
    return next((g for g in groups if g.name == name), None) or next((g for g in groups if name in g.runs), None)


def baseline_run(group: Group, baseline: str) -> str | None:
    """The run a per-run comparison is taken against: `baseline` itself, or the only run of the group it names."""
    if baseline in group.runs:
        return baseline
    return group.runs[0] if len(group.runs) == 1 else None


def group_notes(groups: Sequence[Group]) -> list[str]:
    """What each group holds, and any seed two of its runs share (they are then not independent replicates)."""
    described = "; ".join(
        f"{g.name} = {', '.join(g.runs)} (seed{'s' if len(g.seeds) > 1 else ''} {', '.join(map(_seed, g.seeds))})"
        for g in groups
    )
    notes = [f"Groups (runs equal in every setting but run name and seed): {described}."]
    for group in groups:
        shared = sorted({_seed(seed) for seed in group.seeds if group.seeds.count(seed) > 1})
        if shared:
            notes.append(f"{group.name}: several runs have seed {', '.join(shared)}: they count as separate seeds.")
    return notes


def _seed(seed: int | None) -> str:
    return "unrecorded" if seed is None else str(seed)


def _names(sets: list[list[RunData]]) -> list[str]:
    """Each group's derived name, or its first run's name where the derived one is another group's or another's run."""
    derived = [_derived_name([run.name for run in same]) for same in sets]
    owner = {run.name: index for index, same in enumerate(sets) for run in same}
    return [
        same[0].name if derived.count(name) > 1 or owner.get(name, index) != index else name
        for index, (name, same) in enumerate(zip(derived, sets, strict=True))
    ]


def _derived_name(names: list[str]) -> str:
    """`opd-s0`, `opd-s1` -> `opd`; else the names' common prefix without a trailing separator, or the first name."""
    stems = {match.group("stem") if (match := SEED_SUFFIX.match(name)) else None for name in names}
    if len(stems) == 1 and None not in stems:
        return stems.pop()
    return os.path.commonprefix(names).rstrip("-_.") or names[0]
