"""Which parts of a stage one process (or one Ray task) does: the stages cut their work into numbered parts,
and part p belongs to shard p % count. Light on purpose: the command line checks its options with it
before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class Sharding:
    """The parts of a stage this process does: those with `part % count == index` (none when `plays` is off)."""

    index: int = 0
    count: int = 1
    plays: bool = True

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UserError(f"--shard-index must be in [0, --num-shards), got {self.index} of {self.count}")

    def owns(self, part: int) -> bool:
        return self.plays and part % self.count == self.index


ALL_PARTS = Sharding()  # one process does every part
# None: the call only sets the stage up (with force: clears it) or finalizes it, as a coordinator does.
NO_PARTS = Sharding(plays=False)
