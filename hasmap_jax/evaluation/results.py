"""An evaluation's results as files: `results.csv` (one row per run and image) and `results.json`.

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

from hasmap_jax.evaluation.protocol import Evaluation
from hasmap_jax.files import atomic_output


def write_results(evaluation: Evaluation, out: str | os.PathLike) -> dict[str, Path]:
    """Writes `results.csv` (one row per run and image; `Evaluation.csv_columns`) and `results.json`
    into `out`, atomically.

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
            for row in run.rows:
                w.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    data = _map_floats(evaluation.to_json())
    with atomic_output(json_path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")
    return {"csv": csv_path, "json": json_path}


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
