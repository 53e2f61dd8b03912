"""Reading a run directory, finished or not: what `export`, `report`, `inspect` and `push` read.

None of it imports the runner: reading a run needs only the files the runner left (synth/store.py
names them).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import RunError
from .records import concat


def output_files(root: str | Path) -> list[Path]:
    """The files of a finished run's final dataset, in order."""
    out = Path(root) / "output"
    if not out.is_dir():
        raise RunError(f"{root} has no output yet: finish the run with 'synth run' first")
    return sorted(out.glob("*.parquet"))


def read_output(root: str | Path) -> pa.Table:
    """The final dataset of a finished run as one Arrow table (for runs that fit in memory; the
    export streams over `output_files`)."""
    return concat([pq.read_table(p) for p in output_files(root)])
