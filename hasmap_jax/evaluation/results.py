"""An evaluation's results as files: `results.csv` (one row per run and image) and `results.json`.

Every original has a row in every run, also one without a usable protected output: no protected
file, or several candidates (`missing_rows`: scores empty, "error" says which and that the summary
counts it as rated high), as `results.json` lists them under "unmatched_originals" and "ambiguous".

With robustness operations (`evaluate(attacks=...)`), `results.csv` has three more columns per
operation (`attack_columns`: the original's and the protected photo's score after it, and whether
the protected one is still rated high), and each run's summary in `results.json` has a
"robustness" table: per operation, the share still rated high, rated low, and the originals' share.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from hasmap_jax.evaluation.protocol import Evaluation, RunResult
from hasmap_jax.files import atomic_output


def write_results(evaluation: Evaluation, out: str | os.PathLike) -> dict[str, Path]:
    """Writes `results.csv` (one row per run and image, originals without a protected output
    included; `Evaluation.csv_columns`) and `results.json` into `out`, atomically.

    PSNR of an unchanged image is infinite: "inf" in both files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "results.csv", out / "results.json"
    columns = evaluation.csv_columns
    with atomic_output(csv_path, "w") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for run in evaluation.runs:
            for row in sorted([*run.rows, *missing_rows(evaluation.originals, run)], key=lambda r: r["key"]):
                w.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    data = _map_floats(evaluation.to_json())
    with atomic_output(json_path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")
    return {"csv": csv_path, "json": json_path}


def missing_rows(originals: Path, run: RunResult) -> list[dict]:
    """Rows for the originals of `run` that have no protected file, or several candidates."""
    rows = []
    for f in run.match.unmatched_originals:
        key = Path(f).relative_to(originals).with_suffix("").as_posix()
        error = "no protected file (counted as rated high)"
        rows.append({"run": run.name, "key": key, "original": str(f), "protected": "", "error": error})
    for key, candidates in run.match.ambiguous.items():
        error = f"{len(candidates)} protected files match this original (counted as rated high)"
        protected = "; ".join(map(str, candidates))
        rows.append({"run": run.name, "key": key, "original": "", "protected": protected, "error": error})
    return rows


def _map_floats(o):
    """JSON-safe copy: inf -> "inf", nan -> None, paths and numpy scalars -> str / Python numbers."""
    if isinstance(o, dict):
        return {str(k): _map_floats(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_map_floats(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, Path):
        return str(o)
    return o
