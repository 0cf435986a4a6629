"""`write_report`: load the runs once, then write every table and figure of the report folder from them.

Everything is computed from one set of loaded frames, so the terminal table, the Markdown page and the
figures cannot disagree. A figure with nothing to show (no annotations in any run, say) is not drawn,
and an older copy of it is removed, so the folder never mixes figures of two reports.

Runs that differ only in seed form a group. When some group has several seeds, the report leads with the
across-seed tables (mean ± 95% t-interval over seeds, the difference to the baseline group) and figures
with bands, and the per-run tables follow. `baseline` names a run or a group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.atomic import write_text
from pipeline.errors import UserError
from pipeline.report.comparisons import comparability_notes, compare_to_baseline, improvement_table
from pipeline.report.figures_eval import ACTIONS_FILE, SUCCESS_FILE, action_rates_figure, success_figure
from pipeline.report.figures_labels import (
    BY_ROUND_FILE,
    BY_TURN_FILE,
    CONFIDENCE_FILE,
    confidence_figure,
    labels_by_round_figure,
    labels_by_turn_figure,
)
from pipeline.report.figures_seeds import (
    SEED_ACTIONS_FILE,
    SEED_SUCCESS_FILE,
    seed_action_rates_figure,
    seed_success_figure,
)
from pipeline.report.figures_training import TRAINING_FILE, training_figure
from pipeline.report.groups import Group, baseline_run, find_group, group_notes, group_runs, several_seeds
from pipeline.report.loading import RunData, load_runs, runs_there
from pipeline.report.markdown import report_page
from pipeline.report.metrics import eval_metrics
from pipeline.report.plotting import FigureFile
from pipeline.report.seed_tables import (
    difference_table,
    eval_set_notes,
    gain_table,
    gap_table,
    group_actions_table,
    group_labels_table,
    group_response_table,
    group_success_table,
    group_task_type_table,
)
from pipeline.report.seeds import gain_cells, label_cells, seed_cells
from pipeline.report.tables import Table, round_log_table, success_table, task_type_table

PAGE_FILE = "report.md"
FIGURES_DIR = "figures"


@dataclass
class Report:
    """What `write_report` wrote; `headline` are the tables worth printing (success, improvement over the
    baseline: across seeds when some group has several, else per run)."""

    page: Path
    runs: list[RunData]
    groups: list[Group]
    headline: list[Table]
    tables: list[Table]
    figures: list[FigureFile]
    notes: list[str]


def write_report(
    runs_dir: Path, names: Sequence[str], out: Path, baseline: str | None = None, annotations: str = "annotations"
) -> Report:
    """Write `out/report.md` and `out/figures/*.png` for the runs `names` of `runs_dir`."""
    runs = load_runs(runs_dir, names, annotations)
    groups = group_runs(runs)
    base = _baseline_group(runs_dir, names, groups, baseline)
    metrics = eval_metrics(pd.concat([run.evals for run in runs], ignore_index=True))
    per_run = [success_table(metrics, runs)]
    if base is not None and (against := baseline_run(base, baseline)) is not None:
        per_run.append(improvement_table(compare_to_baseline(metrics, runs, against), against))
    notes = comparability_notes(metrics) + [f"{run.name}: {note}" for run in runs for note in run.notes]
    cells = seed_cells(metrics, groups) if several_seeds(groups) else None
    headline, details = per_run, []
    if cells is not None:
        headline = [group_success_table(cells, groups)]
        gains = gain_cells(metrics, groups)
        headline += [] if gains.empty else [gain_table(gains, cells, groups)]
        headline += [table] if (table := gap_table(cells, groups)) is not None else []
        if base is not None:
            headline.append(difference_table(cells, groups, base))
        labels = label_cells(runs, groups)
        details = [group_task_type_table(cells, groups), group_actions_table(cells, groups)]
        details += [] if labels.empty else [group_labels_table(labels, groups), group_response_table(labels, groups)]
        details += per_run
        notes = group_notes(groups) + eval_set_notes(cells) + notes
    tables = [*headline, *details, task_type_table(metrics, runs), round_log_table(runs)]
    figures = _draw_figures(metrics, runs, cells, groups, out / FIGURES_DIR)
    page = out / PAGE_FILE
    write_text(page, report_page(runs, runs_dir, tables, figures, notes, out))
    return Report(page, runs, groups, headline, tables, figures, notes)


def _baseline_group(runs_dir: Path, names: Sequence[str], groups: list[Group], baseline: str | None) -> Group | None:
    """The group `--baseline` names, by its own name or one of its runs'; UserError when it names neither."""
    if baseline is None:
        return None
    if (group := find_group(groups, baseline)) is not None:
        return group
    if (runs_dir / baseline).is_dir():
        reported = ", ".join(names)
        raise UserError(f"--baseline {baseline} is not among the runs reported ({reported}): add --run {baseline}")
    raise UserError(
        f"--baseline {baseline}: no such run in {runs_dir} ({runs_there(runs_dir)}), nor a group of the runs "
        f"reported (groups: {', '.join(group.name for group in groups)})"
    )


def _draw_figures(
    metrics: pd.DataFrame, runs: list[RunData], cells: pd.DataFrame | None, groups: list[Group], directory: Path
) -> list[FigureFile]:
    """Every figure in page order; the across-seed ones only with `cells` (when some group has several seeds)."""

    def across(draw: Callable[[pd.DataFrame, list[Group], Path], FigureFile | None]) -> FigureFile | None:
        return None if cells is None else draw(cells, groups, directory)

    drawings: list[tuple[str, Callable[[], FigureFile | None]]] = [
        (SEED_SUCCESS_FILE, lambda: across(seed_success_figure)),
        (SEED_ACTIONS_FILE, lambda: across(seed_action_rates_figure)),
        (SUCCESS_FILE, lambda: success_figure(metrics, runs, directory)),
        (ACTIONS_FILE, lambda: action_rates_figure(metrics, runs, directory)),
        (BY_ROUND_FILE, lambda: labels_by_round_figure(runs, directory)),
        (BY_TURN_FILE, lambda: labels_by_turn_figure(runs, directory)),
        (CONFIDENCE_FILE, lambda: confidence_figure(runs, directory)),
        (TRAINING_FILE, lambda: training_figure(runs, directory)),
    ]
    figures = []
    for name, draw in drawings:
        figure = draw()
        if figure is None:
            (directory / name).unlink(missing_ok=True)
        else:
            figures.append(figure)
    return figures
