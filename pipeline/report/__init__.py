"""`sage-opd report`: tables and PNG figures across the rounds of one or more runs.

loading (runs on disk -> frames) -> metrics (rates from eval episodes) -> tables / comparisons (text
cells) and figures_* (PNGs) -> markdown (the page); build.write_report runs them in that order.
Across seeds: groups (runs equal but for seed) -> seeds (per-seed values per cell) -> seed_tables and
figures_seeds, with the statistics (t-intervals over seeds, Welch differences) in stats.
"""

from pipeline.report.build import Report, write_report

__all__ = ["Report", "write_report"]
