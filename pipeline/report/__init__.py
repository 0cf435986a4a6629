"""`sage-opd report`: tables and PNG figures across the rounds of one or more runs.

loading (runs on disk -> frames) -> metrics (rates from eval episodes) -> tables / comparisons (text
cells) and figures_* (PNGs) -> markdown (the page); build.write_report runs them in that order.
"""

from pipeline.report.build import Report, write_report

__all__ = ["Report", "write_report"]
