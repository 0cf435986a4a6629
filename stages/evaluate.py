"""`sage-opd eval`: success per split and task type; one row per episode plus summary.json."""

from stages.common import play_command

evaluate = play_command("eval", "Evaluate the student (or --policy) on the eval splits at the eval temperature.")
