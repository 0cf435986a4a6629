"""`sage-opd rollout`: the policy plays the round's games; every turn lands in `turns` shards."""

from stages.common import play_command

rollout = play_command("rollout", "Play games with the student (or --policy) and write one Parquet row per turn.")
