"""Evaluating protected photos (`hasmap evaluate`): the MediaEval 2020 protocol plus distortion metrics.

matching   pairing protected files with their originals (suffix-aware, manifest-aware)
protocol   `evaluate`: JPEG-90, then score; distortion per pair; the summary per run
results    results.csv and results.json
report     the HTML report with previews, difference images and plots
"""

from hasmap_jax.evaluation.matching import Match, infer_suffix, manifest_settings, match_files
from hasmap_jax.evaluation.protocol import CSV_COLUMNS, Evaluation, RunResult, evaluate, summarize
from hasmap_jax.evaluation.report import write_report
from hasmap_jax.evaluation.results import write_results

__all__ = [
    "CSV_COLUMNS",
    "Evaluation",
    "Match",
    "RunResult",
    "evaluate",
    "infer_suffix",
    "manifest_settings",
    "match_files",
    "summarize",
    "write_report",
    "write_results",
]
