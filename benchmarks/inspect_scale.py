"""`synth inspect` and `synth report` on a Magpie-sized run: seconds and peak memory.

Writes a complete run directly as Parquet shards, markers and a manifest (tests/test_inspect_scale.py's
`write_run`): 01-magpie (a source, N rows in shards of 256, the default batch size), 02-tag (the same
shards, hard-linked: a per-row stage's files without a second copy on disk), 03-dedup (a global
stage that drops 5% of the rows, stored by position) and the output. Instructions are 20 to 600
characters and responses 100 to 2,500 (uniform), random words; task categories, a reward and a
provenance struct per row. Then times each command in a fresh process (`/usr/bin/time`-style peak
RSS from the child's own rusage) and, with --baseline, the in-memory path inspect took before (the
whole output as one Arrow table, stats with pyarrow compute).

    python benchmarks/inspect_scale.py                     # 4M rows (about 6 GB of disk, 5 minutes)
    python benchmarks/inspect_scale.py --rows 1000000 --baseline
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_inspect_scale import write_run  # noqa: E402

LENGTHS = (20, 600, 100, 2_500)  # instruction lo, hi; response lo, hi (characters)

BASELINE = """
import json, sys, time
from pathlib import Path
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from synth.parquet import concat
root = Path(sys.argv[1])
table = concat([pq.read_table(p) for p in sorted((root / "output").glob("*.parquet"))])
for name in table.column_names:
    column = table.column(name)
    if pa.types.is_string(column.type):
        lengths = pc.utf8_length(column)
        print(name, pc.min(lengths), pc.mean(lengths), pc.max(lengths), pc.count_distinct(column), column.null_count)
    elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        print(name, pc.min(column), pc.mean(column), pc.max(column), column.null_count)
print(json.dumps(table.slice(0, 3).to_pylist(), default=str)[:200])
"""


def timed(args: list[str], scratch: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one command, measured by GNU time (the rusage of a child
    forked from this large process would count this process's memory too)."""
    report = scratch / "time.txt"
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120"},
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-2000:].decode(errors='replace')}")
    return seconds, int(report.read_text().split()[-1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/synth-inspect-scale"))
    parser.add_argument("--reuse", action="store_true", help="time an existing run in --dir instead of writing one")
    parser.add_argument("--keep", action="store_true", help="leave the run on disk")
    parser.add_argument("--baseline", action="store_true", help="also time the in-memory path (memory hungry)")
    args = parser.parse_args()
    root = args.dir / f"run-{args.rows}"
    if not args.reuse:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        started = time.perf_counter()
        info = write_run(root, args.rows, shard_rows=256, output_rows=10_240, lengths=LENGTHS)
        files = {f.stat().st_ino: f.stat().st_size for f in root.rglob("*") if f.is_file()}  # links once
        size = sum(files.values()) / 2**30
        print(
            f"wrote {args.rows:,} rows ({info['kept']:,} out, {info['shards']:,} shards a stage, {size:.1f} GB "
            f"on disk) in {time.perf_counter() - started:.0f} s"
        )
    synth = [sys.executable, "-m", "synth.cli"]
    check = [sys.executable, "-c", f"from synth.integrity import require_intact; require_intact({str(root)!r})"]
    commands = {
        "integrity check alone (every footer of 3 stages and the output)": check,
        "synth inspect RUN (the output: stats of every column, 3 rows)": [*synth, "inspect", str(root)],
        "synth inspect RUN --stage magpie (15,625 shards at 4M)": [*synth, "inspect", str(root), "--stage", "magpie"],
        "synth inspect RUN --stage dedup --dropped (rows by position)": [
            *synth,
            "inspect",
            str(root),
            "--stage",
            "dedup",
            "--dropped",
        ],
        "synth report RUN": [*synth, "report", str(root), "-o", str(args.dir / "report")],
    }
    if args.baseline:
        commands["before: whole output in memory, pyarrow compute"] = [sys.executable, "-c", BASELINE, str(root)]
    print(f"\n| command ({args.rows:,} rows) | seconds | peak RSS (GB) |\n|---|---|---|")
    for name, command in commands.items():
        seconds, peak = timed(command, args.dir)
        print(f"| {name} | {seconds:.1f} | {peak:.2f} |", flush=True)
    if not args.keep:
        shutil.rmtree(root)
        shutil.rmtree(args.dir / "report", ignore_errors=True)


if __name__ == "__main__":
    main()
