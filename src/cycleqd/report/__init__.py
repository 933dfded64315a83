"""Reports of run folders (face layer): Markdown with tables, archive heatmaps and curves."""

from cycleqd.report.plots import plot_archives, plot_bars, plot_curves, read_metrics
from cycleqd.report.run_report import markdown_table, write_run_report

__all__ = ["markdown_table", "plot_archives", "plot_bars", "plot_curves", "read_metrics", "write_run_report"]
