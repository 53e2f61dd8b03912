"""Export at scale: `synth export` (SFT, a 2% test split) of a Magpie-sized run's output, with the
wall time and the peak RSS of the process that exports.

    python benchmarks/export_scale.py                                   # 1M and 4M rows
    python benchmarks/export_scale.py --rows 1000000 --baseline 45a92dd # and the in-memory export at 1M

The run's output is written directly as Parquet (`output/data-NNNNN-of-MMMMM.parquet`, 10,000 rows
a file, as the runner writes it): instruction and response texts of lognormal lengths (medians
about 400 and 1,300 characters, clipped to 60-4,000 and 100-8,000: a few hundred to a few
thousand, as Magpie's), 5% of the instructions an exact copy of an earlier one, a task category,
a difficulty, a reward, a provenance record. The data is written and each export runs in a child
process of a parent that holds no data, so ru_maxrss is the export's own (a child's starts from
its parent's peak at fork). `--baseline COMMIT` also runs the in-memory export of that commit
(its synth/export.py read with `git show`), which holds every row as a Python dict.
Data goes under --dir and is deleted at the end (--keep keeps it).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_FILE = 10_000
CATEGORIES = ["Math", "Coding & Debugging", "Information seeking", "Creative writing", "Reasoning", "Planning"]


def _texts(rng: np.random.Generator, pool: np.ndarray, lengths: np.ndarray, starts: np.ndarray) -> pa.Array:
    """A string array of slices of the pool (ASCII words), built from buffers without Python per row."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    data = pool[index]
    return pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data)).cast(pa.string())


def write_run(root: Path, rows: int, seed: int = 0) -> None:
    """A finished run whose output is `rows` Magpie-like rows."""
    rng = np.random.default_rng(seed)
    words = [
        "".join(chr(c) for c in rng.integers(97, 123, size=int(k)))
        for k in rng.integers(1, 11, size=50_000)  # a vocabulary of 50k lowercase words
    ]
    pool = np.frombuffer(" ".join(rng.choice(words, size=4_000_000)).encode(), dtype=np.uint8)
    out = root / "output"
    out.mkdir(parents=True)
    n_files = -(-rows // ROWS_PER_FILE)
    seen_starts, seen_lengths = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for k in range(n_files):
        n = min(ROWS_PER_FILE, rows - k * ROWS_PER_FILE)
        ins_len = np.clip(rng.lognormal(np.log(400), 0.8, n), 60, 4000).astype(np.int64)
        res_len = np.clip(rng.lognormal(np.log(1300), 0.8, n), 100, 8000).astype(np.int64)
        ins_start = rng.integers(0, len(pool) - 4000, n)
        res_start = rng.integers(0, len(pool) - 8000, n)
        if len(seen_starts):  # 5% exact copies of an earlier instruction
            copy = rng.random(n) < 0.05
            pick = rng.integers(0, len(seen_starts), int(copy.sum()))
            ins_start[copy], ins_len[copy] = seen_starts[pick], seen_lengths[pick]
        keep = rng.integers(0, n, 200)
        seen_starts = np.concatenate([seen_starts, ins_start[keep]])[-50_000:]
        seen_lengths = np.concatenate([seen_lengths, ins_len[keep]])[-50_000:]
        base = k * ROWS_PER_FILE
        provenance = pa.StructArray.from_arrays(
            [
                pa.StructArray.from_arrays(
                    [pa.array(np.arange(base, base + n)), pa.array(["magpie"] * n)], ["seed", "model"]
                )
            ],
            ["respond"],
        )
        table = pa.table(
            {
                "instruction": _texts(rng, pool, ins_len, ins_start),
                "response": _texts(rng, pool, res_len, res_start),
                "task_category": pa.array(rng.choice(CATEGORIES, n)),
                "difficulty": pa.array(rng.choice(["easy", "medium", "hard"], n)),
                "instruct_reward": pa.array(rng.normal(0, 1, n)),
                "provenance": provenance,
            }
        )
        pq.write_table(table, out / f"data-{k:05d}-of-{n_files:05d}.parquet", compression="zstd")
    manifest = {"synth_manifest": 1, "name": "magpie-scale", "status": "complete", "seed": seed}
    (root / "manifest.json").write_text(json.dumps(manifest))


def _baseline_module(commit: str) -> types.ModuleType:
    """synth/export.py as it was at `commit`, as a module of the synth package."""
    source = subprocess.check_output(["git", "show", f"{commit}:synth/export.py"], text=True)
    module = types.ModuleType("synth._export_baseline")
    module.__package__ = "synth"
    exec(compile(source, f"{commit}:synth/export.py", "exec"), module.__dict__)
    return module


def export_child(run: Path, out: Path, baseline: str | None) -> None:
    """Run in a child process: export, then print seconds and peak RSS as JSON."""
    if baseline:
        export_run = _baseline_module(baseline).export_run
    else:
        from synth.export import export_run
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    started = time.perf_counter()
    counts = export_run(run, out, "sft", test_size=0.02, seed=42)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "import_rss": imported, "counts": counts}))


def measure(run: Path, out: Path, baseline: str | None) -> dict:
    command = [sys.executable, __file__, "--child", str(run), str(out)] + (
        ["--child-baseline", baseline] if baseline else []
    )
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--baseline", help="also export with synth/export.py of this commit (in memory)")
    parser.add_argument("--baseline-rows", type=int, default=1_000_000, help="largest run the baseline exports")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/synth-export-scale"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-baseline", help=argparse.SUPPRESS)
    parser.add_argument("--child-write", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_write:
        write_run(Path(args.child_write[0]), int(args.child_write[1]))
        return
    if args.child:
        export_child(*args.child, args.child_baseline)
        return
    print(
        "| rows | export | seconds | peak RSS (of which imports) | train / test rows | output on disk (train files) |"
    )
    print("|---:|---|---:|---:|---|---:|")
    try:
        for rows in args.rows:
            run = args.dir / f"run-{rows}"
            shutil.rmtree(run, ignore_errors=True)
            started = time.perf_counter()
            # in a child too: a child's ru_maxrss starts from its parent's peak at fork
            subprocess.run([sys.executable, __file__, "--child-write", str(run), str(rows)], check=True)
            print(f"<!-- wrote {rows:,} rows in {time.perf_counter() - started:.0f} s, {_size(run) / 1e9:.2f} GB -->")
            kinds = [None] + ([args.baseline] if args.baseline and rows <= args.baseline_rows else [])
            for baseline in kinds:
                out = args.dir / f"out-{rows}"
                shutil.rmtree(out, ignore_errors=True)
                r = measure(run, out, baseline)
                name = f"in-memory ({baseline})" if baseline else "streaming"
                if "error" in r:
                    print(f"| {rows:,} | {name} | failed: {r['error']} | | | |")
                    continue
                split = f"{r['counts']['train']:,} / {r['counts']['test']:,}"
                print(
                    f"| {rows:,} | {name} | {r['seconds']:.0f} | {r['peak_rss'] / 2**30:.2f} GiB "
                    f"({r['import_rss'] / 2**30:.2f}) | {split} | "
                    f"{_size(out) / 1e9:.2f} GB ({len(list(out.glob('train-*')))}) |",
                    flush=True,
                )
                shutil.rmtree(out, ignore_errors=True)
            if not args.keep:
                shutil.rmtree(run, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
