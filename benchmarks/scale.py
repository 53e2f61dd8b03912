"""Scale benchmark: Magpie's 300K filter over millions of generated rows, on one machine.

    python benchmarks/scale.py                                # 1M and 4M rows; in-memory synth at 1M
    python benchmarks/scale.py --rows 1000000 --baseline none # one size, no baseline

For each size it writes a Magpie-like run directly as the shards of its first stage (what the
generation stages would have written: id, instruction, response, input_quality, instruct_reward,
task_category, provenance; instruction and response lengths drawn log-normally, a few hundred to
a few thousand characters; 5% exact duplicates of earlier instructions), then times two commands,
each in its own process, with its wall time and peak RSS (GNU time):

    synth run scale.yaml -o RUN       # filters/magpie-300k.yaml with exact dedup instead of the
                                      # embedding step: dedup, quality and reward filters, the ':'
                                      # rule, the 300K longest responses, a seeded shuffle
    synth export RUN -o OUT --format sft --test-size 0.02

The baseline is the same run on synth as of --baseline (a git commit; by default the last one
whose global stages held every row in memory), checked out in a temporary worktree and imported
through PYTHONPATH; it runs at the first size only (at 4M it needs more memory than a 24 GB
machine has). Data goes under --workdir (default: a temporary folder on the disk of the current
directory, about 3 GB per million rows) and is deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IN_MEMORY = "45a92dd"  # the last commit whose global stages read every row into memory
SHARD_ROWS = 256  # the run's batch size (synth's default): shards of the generation stages

PIPELINE = """\
name: scale
seed: 1
stages:
  - stage: load           # stands for the generation stages: their shards are written by the benchmark
    path: seed.jsonl
  - include: magpie-300k
    with:
      dedup: {method: exact}
output: {format: sft}
"""


def words(rng, n: int) -> bytes:
    """n words of a made-up language: 30,000 words of 1-12 letters with Zipf frequencies, so the
    text compresses about as English does (a few distinct words would flatter the disk)."""
    import numpy as np

    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    freq = 1.0 / np.arange(1, 27)
    lengths = rng.integers(1, 13, size=30_000)
    vocab = [bytes(letters[rng.choice(26, size=k, p=freq / freq.sum())]) for k in lengths.tolist()]
    rank = 1.0 / np.arange(1, len(vocab) + 1)
    picked = rng.choice(len(vocab), size=n, p=rank / rank.sum())
    return b" ".join(vocab[i] for i in picked.tolist())


def texts(rng, corpus: bytes, n: int, median: float, sigma: float, low: int, high: int):
    """n strings cut from the corpus at random places, lengths log-normal, as one Arrow array."""
    import numpy as np
    import pyarrow as pa

    lengths = np.clip(rng.lognormal(np.log(median), sigma, size=n), low, high).astype(np.int64)
    start = int(rng.integers(0, len(corpus) - int(lengths.sum()) - 1))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    data = pa.py_buffer(corpus[start : start + int(offsets[-1])])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), data)


def generate(run_dir: Path, rows: int, seed: int = 0) -> None:
    """The run directory of scale.yaml with its first stage done: shards, markers, complete marker."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from synth.config import load_pipeline
    from synth.run import Runner
    from synth.store import atomic_write_json

    pipeline = load_pipeline(run_dir.parent / "scale.yaml")
    runner = Runner(pipeline, run_dir)
    runner.directory.open(overwrite=False, retry_failed=None)  # lock, manifest, stage folders
    stage = runner.dirs[0]
    rng = np.random.default_rng(seed)
    corpus = words(rng, 3_000_000)  # ~20 MB of words to cut texts from
    qualities = np.array(["very poor", "poor", "average", "good", "excellent"])
    categories = np.array(["Information seeking", "Coding & Debugging", "Math", "Creative writing", "Advice seeking"])
    previous = None
    for index, offset in enumerate(range(0, rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, rows - offset)
        instruction = texts(rng, corpus, n, 300, 0.8, 20, 4000)
        colon = np.where(rng.random(n) < 0.03, ":", "")  # incomplete queries ending in ':'
        instruction = pc.binary_join_element_wise(instruction, pa.array(colon), "")
        if previous is not None:  # 5% exact copies of an instruction of the shard before
            copy = np.flatnonzero(rng.random(n) < 0.05)
            pool = pa.concat_arrays([instruction, previous])
            take = np.arange(n)
            take[copy] = n + rng.integers(0, len(previous), size=len(copy))
            instruction = pool.take(pa.array(take))
        previous = instruction
        table = pa.table(
            {
                "id": pa.array([f"row-{offset + i}" for i in range(n)]),
                "instruction": instruction,
                "response": texts(rng, corpus, n, 1500, 0.7, 50, 8000),
                "input_quality": pa.array(qualities[rng.choice(5, size=n, p=[0.05, 0.15, 0.25, 0.4, 0.15])]),
                "instruct_reward": pa.array(rng.normal(0, 6, size=n)),
                "task_category": pa.array(categories[rng.integers(0, 5, size=n)]),
                "provenance": pa.StructArray.from_arrays(
                    [pa.array(["gen"] * n), pa.array(rng.integers(0, 2**31, size=n))], names=["model", "seed"]
                ),
            }
        )
        pq.write_table(table, stage.shard(index), compression="zstd")
        atomic_write_json(stage.marker(index), {"rows_in": n, "rows_out": n, "filtered": {}, "failed": {},
                                                "counters": {}, "seconds": 0.0})  # fmt: skip
    atomic_write_json(stage.complete_marker, {"shards": -(-rows // SHARD_ROWS)})
    runner.store.unlock()


def measure(command: list[str], env: dict) -> dict:
    """Wall seconds and peak RSS (GB) of a command, from GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out.name, *command], env=env, capture_output=True)
        seconds = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{done.stdout.decode()[-2000:]}\n{done.stderr.decode()[-3000:]}")
        peak_kb = int(out.read().strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(peak_kb / 2**20, 2)}


def one(rows: int, workdir: Path, source: Path | None) -> dict:
    """Generate, run and export at one size, with synth from `source` (a worktree) or this one."""
    folder = workdir / f"{'base' if source else 'new'}-{rows}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "scale.yaml").write_text(PIPELINE)
    seed = {"id": "row-0", "instruction": "-", "response": "-", "input_quality": "good", "instruct_reward": 0.0,
            "task_category": "Math"}  # fmt: skip
    (folder / "seed.jsonl").write_text(json.dumps(seed) + "\n")  # the columns the generation stages make
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    synth = [sys.executable, "-c", "from synth.cli import main; main()"]
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--generate", str(folder / "run"), "--rows", str(rows)], env=env,
                   check=True)  # fmt: skip
    made = round(time.perf_counter() - started, 1)
    run = measure([*synth, "run", str(folder / "scale.yaml"), "-o", str(folder / "run"), "-q"], env)
    export = measure(
        [*synth, "export", str(folder / "run"), "-o", str(folder / "sft"), "--format", "sft", "--test-size", "0.02"],
        env,
    )
    manifest = json.loads((folder / "run" / "manifest.json").read_text())
    card = (folder / "sft" / "README.md").read_text()
    result = {
        "rows": rows,
        "synth": f"in-memory ({IN_MEMORY})" if source else "out of core",
        "generate_seconds": made,
        "run": run,
        "export": export,
        "output_rows": manifest["output"]["rows"],
        "stages": {s["label"]: [s["rows_in"], s["rows_out"], s.get("wall_seconds")] for s in manifest["stages"]},
        "card_has_split": "test" in card,
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--baseline", default=IN_MEMORY, help="a git commit to compare with at the first size, or none")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary folder here)")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate, args.rows[0])
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="synth-scale-", dir=Path.cwd()))
    results = []
    try:
        for rows in args.rows:
            results.append(one(rows, workdir, None))
            print(json.dumps(results[-1]), flush=True)
        if args.baseline != "none":
            tree = workdir / "baseline-src"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline],
                           check=True, capture_output=True)  # fmt: skip
            try:
                results.append(one(args.rows[0], workdir, tree))
                print(json.dumps(results[-1]), flush=True)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{'rows':>10} {'synth':<22} {'run s':>8} {'run GB':>7} {'export s':>9} {'export GB':>9} {'out rows':>9}")
    for r in results:
        print(
            f"{r['rows']:>10,} {r['synth']:<22} {r['run']['seconds']:>8} {r['run']['peak_rss_gb']:>7} "
            f"{r['export']['seconds']:>9} {r['export']['peak_rss_gb']:>9} {r['output_rows']:>9,}"
        )
    base = next((r for r in results if r["synth"] != "out of core"), None)
    new = next((r for r in results if r["synth"] == "out of core" and base and r["rows"] == base["rows"]), None)
    if base and new:
        total = lambda r: r["run"]["seconds"] + r["export"]["seconds"]  # noqa: E731
        print(f"\nout of core vs in memory at {base['rows']:,} rows: {total(base) / total(new):.2f}x faster")
    print(
        textwrap.dedent("""
        run: synth run on the generated run (every filter step of magpie-300k.yaml, exact dedup);
        export: synth export --format sft --test-size 0.02; GB: peak resident memory of the process.""")
    )


if __name__ == "__main__":
    main()
