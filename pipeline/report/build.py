"""`write_report`: load the runs once, then write every table and figure of the report folder from them.

Everything is computed from one set of loaded frames, so the terminal table, the Markdown page and the
figures cannot disagree. A figure with nothing to show (no annotations in any run, say) is not drawn,
and an older copy of it is removed, so the folder never mixes figures of two reports.
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
from pipeline.report.figures_training import TRAINING_FILE, training_figure
from pipeline.report.loading import RunData, load_runs, runs_there
from pipeline.report.markdown import report_page
from pipeline.report.metrics import eval_metrics
from pipeline.report.plotting import FigureFile
from pipeline.report.tables import Table, round_log_table, success_table, task_type_table

PAGE_FILE = "report.md"
FIGURES_DIR = "figures"


@dataclass
class Report:
    """What `write_report` wrote; `headline` are the tables worth printing (success, improvement over the baseline)."""

    page: Path
    runs: list[RunData]
    headline: list[Table]
    tables: list[Table]
    figures: list[FigureFile]
    notes: list[str]


def write_report(
    runs_dir: Path, names: Sequence[str], out: Path, baseline: str | None = None, annotations: str = "annotations"
) -> Report:
    """Write `out/report.md` and `out/figures/*.png` for the runs `names` of `runs_dir`."""
    _check_baseline(runs_dir, names, baseline)
    runs = load_runs(runs_dir, names, annotations)
    metrics = eval_metrics(pd.concat([run.evals for run in runs], ignore_index=True))
    headline = [success_table(metrics, runs)]
    if baseline is not None:
        headline.append(improvement_table(compare_to_baseline(metrics, runs, baseline), baseline))
    tables = [*headline, task_type_table(metrics, runs), round_log_table(runs)]
    figures = _draw_figures(metrics, runs, out / FIGURES_DIR)
    notes = comparability_notes(metrics) + [f"{run.name}: {note}" for run in runs for note in run.notes]
    page = out / PAGE_FILE
    write_text(page, report_page(runs, runs_dir, tables, figures, notes, out))
    return Report(page, runs, headline, tables, figures, notes)


def _check_baseline(runs_dir: Path, names: Sequence[str], baseline: str | None) -> None:
    if baseline is None or baseline in names:
        return
    if (runs_dir / baseline).is_dir():
        reported = ", ".join(names)
        raise UserError(f"--baseline {baseline} is not among the runs reported ({reported}): add --run {baseline}")
    raise UserError(f"--baseline {baseline}: no such run in {runs_dir} ({runs_there(runs_dir)})")


def _draw_figures(metrics: pd.DataFrame, runs: list[RunData], directory: Path) -> list[FigureFile]:
    drawings: list[tuple[str, Callable[[], FigureFile | None]]] = [
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
