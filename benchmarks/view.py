"""`synth view` on the scale benchmark's run: how long a page takes, and the memory it holds.

    python benchmarks/view.py                      # 4M rows (about 12 GB of disk, written once)
    python benchmarks/view.py --rows 1000000
    python benchmarks/view.py --run DIR            # a run made before (kept with --keep)

Writes the run of benchmarks/scale.py (its first stage done: Magpie-like rows in shards of 256,
instructions of a few hundred characters, responses of about 1,500), then, in a fresh process,
serves it with the viewer's server on loopback and times what a user's clicks ask for over HTTP:
opening the run (the integrity check reads every shard's footer), the first page, a page deep
in, a filtered page (a category and a range on the reward) and its count, a sorted page, a
full-text search over every text column (its first page, its count, and a word that matches
nothing, which reads every text), and a row's lineage. Peak memory is the serving process's own (its
rusage); the targets of issue 32 on 2 cores: first page under 1 s, a filtered page under 3 s, a
search under 10 s, memory under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

CLICKS = """
import json, resource, sys, threading, time, urllib.parse, urllib.request
from pathlib import Path
from synth.view.server import ViewServer

started = time.perf_counter()
server = ViewServer(Path(sys.argv[1]), port=0)
threading.Thread(target=server.serve_forever, daemon=True).start()
def get(path, **params):
    began = time.perf_counter()
    with urllib.request.urlopen(server.url + path + "?" + urllib.parse.urlencode(params), timeout=600) as answer:
        body = json.loads(answer.read())
    return round(time.perf_counter() - began, 2), body
opened, run = get("api/run")
results = {"open_run_s": round(time.perf_counter() - started, 2), "stages": [s["name"] for s in run["stages"]]}
stage = run["stages"][0]["name"]
results["first_page_s"], page = get("api/rows", stage=stage, limit=20)
results["rows"] = page["total"]
results["deep_page_s"], _ = get("api/rows", stage=stage, limit=20, offset=page["total"] // 2)
filters = json.dumps([["task_category", "eq", "Math"], ["instruct_reward", "gt", "5"]])
results["filtered_page_s"], _ = get("api/rows", stage=stage, limit=20, filters=filters, count=0)
results["filtered_count_s"], found = get("api/rows", stage=stage, limit=20, filters=filters)
results["filtered_rows"] = found["total"]
results["sorted_page_s"], _ = get("api/rows", stage=stage, limit=20, sort="instruct_reward", desc="1")
word = max(page["rows"][0]["row"]["response"].split(), key=len)  # a rare word: a page of hits is not enough
results["search_page_s"], _ = get("api/rows", stage=stage, limit=20, q=word, count=0)
results["search_s"], hits = get("api/rows", stage=stage, limit=20, q=word)
# a word hardly any row holds: the scan reads every text before the page is full
results["rare_search_s"], rare = get("api/rows", stage=stage, limit=20, q="zqzqzq", count=0)
results["rare_rows"] = rare["total"]
results["search_word"], results["search_rows"] = word, hits["total"]
results["lineage_s"], _ = get("api/row", stage=stage, position=page["total"] - 1)
results["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
server.shutdown()
print(json.dumps(results))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--run", type=Path, help="a run directory written by an earlier --keep (skips writing one)")
    parser.add_argument("--workdir", type=Path, help="where the run goes (default: a temporary folder here)")
    parser.add_argument("--keep", action="store_true", help="keep the run for the next --run")
    args = parser.parse_args()
    from scale import PIPELINE

    workdir = None
    run = args.run
    if run is None:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="synth-view-", dir=Path.cwd()))
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "scale.yaml").write_text(PIPELINE)
        seed = {"id": "row-0", "instruction": "-", "response": "-", "input_quality": "good", "instruct_reward": 0.0,
                "task_category": "Math"}  # fmt: skip
        (workdir / "seed.jsonl").write_text(json.dumps(seed) + "\n")  # the columns scale.py's rows have
        run = workdir / "run"
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--generate", str(run), "--rows",
                        str(args.rows)], check=True)  # fmt: skip
    try:
        done = subprocess.run([sys.executable, "-c", CLICKS, str(run)], capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        results = json.loads(done.stdout.splitlines()[-1])
    finally:
        if workdir is not None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=1))
    print(f"\n{results['rows']:,} rows: open {results['open_run_s']} s, first page {results['first_page_s']} s, "
          f"filtered page {results['filtered_page_s']} s, counted {results['filtered_count_s']} s "
          f"({results['filtered_rows']:,} rows), sorted {results['sorted_page_s']} s, search page "
          f"{results['search_page_s']} s, counted {results['search_s']} s ({results['search_rows']:,} rows), "
          f"no match {results['rare_search_s']} s, lineage {results['lineage_s']} s; "
          f"peak memory {results['peak_rss_gb']} GB")  # fmt: skip
    if workdir is not None and args.keep:
        print(f"kept: {run} (next time: --run {run})")


if __name__ == "__main__":
    main()
