"""A benchmark row and the table `make bench` prints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    name: str
    value: float
    target: str
    ok: bool
    detail: str


def print_table(rows: list[Row]) -> None:
    width = max(len(r.name) for r in rows)
    print(f"\n{'benchmark':<{width}}  {'value':>8}  {'target':>8}  ok   detail")
    for r in rows:
        print(f"{r.name:<{width}}  {r.value:>8.3f}  {r.target:>8}  {'yes' if r.ok else 'NO ':<3}  {r.detail}")
