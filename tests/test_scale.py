"""Global stages out of core (issue 18): the same rows, in the same order, as the in-memory path.

Each stage's `select` runs over real Parquet shards of uneven sizes (some empty) and the runner's
gather writes the result in small chunks, with buckets small enough that a sort or a shuffle goes
through several of them on disk; the rows must equal those of the in-memory implementations the
stages had before (tests/inmemory_reference.py)."""

from __future__ import annotations

import asyncio
import json
import random
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.config import load_pipeline
from synth.run import run_pipeline
from synth.runs import Run, read_output
from synth.shards import Rows, gather, take
from synth.stages.base import Batch, StageContext
from synth.stages.dedup.dedup import Dedup, DedupParams
from synth.stages.select.filter import Filter, FilterParams, Length, LengthParams, Regex, RegexParams
from synth.stages.select.sort import Sort, SortParams
from synth.stages.select.subset import Limit, LimitParams, Sample, SampleParams
from synth.store import RunStore

from . import inmemory_reference as ref

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def make_table(n: int, seed: int = 0) -> pa.Table:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))
        if rng.random() < 0.15 and rows:  # duplicates, some differing only in case and punctuation
            text = rng.choice(rows)["instruction"]
            text = text.upper() + "!" if rng.random() < 0.5 else text
        rows.append(
            {
                "id": f"r{i}",
                "instruction": text,
                "response": None if rng.random() < 0.05 else " ".join(rng.choices(WORDS, k=rng.randint(0, 30))),
                "score": None if rng.random() < 0.1 else rng.choice([1.5, 2.0, -3.0, 7.25, rng.uniform(-10, 10)]),
                "quality": rng.choice(["poor", "average", "good", "excellent", None]),
                "turns": [rng.randint(0, 3) for _ in range(rng.randint(0, 4))],
            }
        )
    return pa.Table.from_pylist(rows)


def write_shards(table: pa.Table, folder: Path, seed: int = 0) -> list[Path]:
    """The table as Parquet shards of uneven sizes, some of them empty (a batch a filter emptied)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files, offset, k = [], 0, 0
    while offset < table.num_rows:
        size = rng.choice([0, 1, 5, 17, 40])
        part = table.slice(offset, size) if size else pa.table({})
        path = folder / f"shard-{k:05d}.parquet"
        pq.write_table(part, path)
        files.append(path)
        offset, k = offset + size, k + 1
    return files


def pipeline_on(write, tmp_path: Path, rows: list[dict], batch_size: int, stages: str) -> Path:
    """A pipeline file that loads `rows` (written as in.jsonl) and runs `stages` (YAML list items)."""
    with open(tmp_path / "in.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    head = f"run: {{batch_size: {batch_size}}}\nstages:\n  - stage: load\n    path: in.jsonl\n"
    items = textwrap.indent(textwrap.dedent(stages).strip("\n"), "  ")
    return write("p.yaml", head + items + "\noutput: {format: raw}\n")


def ctx(tmp_path: Path, label: str = "stage") -> StageContext:
    return StageContext(seed=7, label=label, index=1, base_dir=tmp_path, stage_dir=tmp_path / label)


def run_select(stage, files: list[Path], chunk: int = 13, bucket_bytes: int = 2_000):
    """The runner's path: select over the shards, then gather in chunks; (rows, dropped positions+reasons)."""
    rows = Rows.from_files(files)
    batch = Batch()
    selection = asyncio.run(stage.process_all(rows, batch))
    parts: list[pa.Table] = []
    gather(rows, selection, parts.append, chunk, bucket_bytes=bucket_bytes)
    assert all(p.num_rows == chunk for p in parts[:-1])
    out = [r for p in parts for r in p.to_pylist()]
    dropped = sorted((d.position, d.reason) for d in batch.dropped)
    return out, dropped


def positions_of(table: pa.Table, rows: list[tuple[dict, str]]) -> list[tuple[int, str]]:
    index = {r: i for i, r in enumerate(table.column("id").to_pylist())}
    return sorted((index[row["id"]], reason) for row, reason in rows)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    table = make_table(600)
    return table, write_shards(table, tmp_path_factory.mktemp("shards"))


@pytest.mark.parametrize(
    "params",
    [
        {"by": "score"},
        {"by": "score", "descending": True, "top": 50},
        {"by": "response", "key": "length", "descending": True, "top": 120},
        {"by": "instruction"},
        {"by": "turns", "key": "length"},
        {"by": "quality", "descending": True, "top": 0},
    ],
)
def test_sort_matches_the_in_memory_sort(params, data, tmp_path):
    table, files = data
    out, dropped = run_select(Sort(SortParams(**params), ctx(tmp_path)), files)
    kept, expected_dropped = ref.sort(table, **params)
    assert out == kept.to_pylist()
    assert dropped == positions_of(table, expected_dropped)


@pytest.mark.parametrize(
    "params", [{"n": 100}, {"n": 100, "shuffle": True}, {"fraction": 1.0, "shuffle": True, "seed": 42}]
)
def test_sample_matches_the_in_memory_sample(params, data, tmp_path):
    table, files = data
    stage = Sample(SampleParams(**params), ctx(tmp_path, "shuffle"))
    out, dropped = run_select(stage, files)
    seed = params.get("seed")
    if seed is None:
        from synth.seeds import derive_seed

        seed = derive_seed(7, "shuffle")
    kept, expected_dropped = ref.sample(
        table, seed, params.get("n"), params.get("fraction"), params.get("shuffle", False)
    )
    assert out == kept.to_pylist()
    assert dropped == positions_of(table, expected_dropped)


def test_limit_matches_the_in_memory_limit(data, tmp_path):
    table, files = data
    out, dropped = run_select(Limit(LimitParams(n=77), ctx(tmp_path)), files)
    kept, expected_dropped = ref.limit(table, 77)
    assert out == kept.to_pylist() and dropped == positions_of(table, expected_dropped)


@pytest.mark.parametrize("method", ["exact", "minhash"])
@pytest.mark.parametrize("id_column", [None, "id"])
def test_dedup_matches_the_in_memory_dedup(method, id_column, data, tmp_path):
    table, files = data
    params = DedupParams(column="instruction", method=method, id_column=id_column, threshold=0.5)
    out, dropped = run_select(Dedup(params, ctx(tmp_path)), files)
    texts = table.column("instruction").to_pylist()
    if method == "exact":
        rep, repeat = ref.dedup_exact(texts)
    else:
        rep, repeat = ref.dedup_minhash(texts, threshold=0.5)
    kept, expected_dropped = ref.dedup(table, "instruction", rep, repeat, method, id_column)
    assert len(expected_dropped) > 20  # the data has duplicates to find
    assert out == kept.to_pylist()
    assert dropped == positions_of(table, expected_dropped)


def test_minhash_bands_propose_the_pairs_datasketch_proposes():
    from datasketch import MinHashLSH

    from synth.similarity.duplicates import band_pairs, minhash_signatures

    rng = random.Random(3)
    texts = [" ".join(rng.choices(WORDS[:6], k=rng.randint(3, 9))) for _ in range(400)]
    for threshold in (0.3, 0.7, 0.9):
        signatures = minhash_signatures(texts, 5, "char", 128)
        lsh = MinHashLSH(threshold=threshold, num_perm=128)
        for u, m in enumerate(signatures):
            lsh.insert(u, m)
        expected = sorted((u, v) for u, m in enumerate(signatures) for v in lsh.query(m) if v > u)
        a, b = band_pairs(np.stack([m.hashvalues for m in signatures]), threshold, 128)
        assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == expected
        assert expected  # these texts share bands


def _by_rows(stage, table: pa.Table, oracle):
    """The stage (on Arrow, its only path) against the same rules applied a dict per row."""
    asyncio.run(stage.open())
    rows, slow = oracle(stage, table.to_pylist())
    fast = Batch(table)
    out = asyncio.run(stage.process(fast))
    assert out.to_pylist() == rows
    drops = fast.dropped.table("input_row")
    drops = drops.to_pylist() if drops is not None else []
    found = [(table.slice(d["input_row"], 1).to_pylist()[0], d["reason"], d["detail"], d["failed"]) for d in drops]
    assert found == slow
    return rows, slow


@pytest.mark.parametrize(
    "where",
    [
        ["quality in [good, excellent]", "score > -3"],
        ["score >= 2.0", "quality is not null"],
        [{"column": "score", "eq": 2}, "missing_column is null"],
        ["response == 'alpha'", "quality != poor"],
        ["id not in [r1, r2, r3]", "turns is null"],
    ],
)
def test_filter_on_arrow_matches_the_row_path(where, tmp_path):
    rows, dropped = _by_rows(Filter(FilterParams(where=where), ctx(tmp_path)), make_table(300, seed=2), ref.filter_rows)
    assert (dropped and rows) or where[1] == "turns is null"


@pytest.mark.parametrize(
    "params",
    [
        {"column": "response", "min_chars": 20, "max_chars": 120, "output": "response_length"},
        {"column": "instruction", "min_tokens": 3, "max_tokens": 8},
        {"column": "instruction", "output": "id"},
    ],
)
def test_length_on_arrow_matches_the_row_path(params, tmp_path):
    _by_rows(Length(LengthParams(**params), ctx(tmp_path)), make_table(300, seed=3), ref.length_rows)


@pytest.mark.parametrize(
    "params",
    [
        {"column": "instruction", "patterns": [r"a\s*$"], "ignore_case": False, "reason": "ends_with_a"},
        {"column": "response", "blocklist": ["gamma delta", "mu"]},
        {"column": "instruction", "patterns": ["^ALPHA"], "keep_matching": True},
    ],
)
def test_regex_on_arrow_matches_the_row_path(params, tmp_path):
    rows, dropped = _by_rows(Regex(RegexParams(**params), ctx(tmp_path)), make_table(300, seed=4), ref.regex_rows)
    assert rows and dropped


def test_take_reads_rows_by_position_across_shards(data):
    table, files = data
    positions = np.asarray([599, 0, 17, 17, 300, 42])
    assert take(Rows.from_files(files), positions).to_pylist() == table.take(pa.array(positions)).to_pylist()


def test_a_pipeline_of_global_stages_gives_the_in_memory_rows(write, tmp_path):
    """Magpie's filter recipe shape end to end through the runner: exact dedup, filters (on the
    Arrow path: their batches come from the dedup's shards), top-k by length, seeded shuffle."""
    table = make_table(1000, seed=5)
    rows = table.to_pylist()
    stages = """
        - {stage: dedup, method: exact, column: instruction, id_column: id}
        - {stage: filter, where: ["quality in [good, excellent, average]"]}
        - {stage: regex, column: instruction, patterns: ['mu\\s*$'], ignore_case: false, reason: ends_with_mu}
        - {stage: sort, by: response, key: length, descending: true, top: 150}
        - {stage: sample, fraction: 1.0, shuffle: true, seed: 42}
        """
    path = pipeline_on(write, tmp_path, rows, 16, stages)
    result = run_pipeline(load_pipeline(path), tmp_path / "run")
    table = pa.Table.from_pylist(rows)
    rep, repeat = ref.dedup_exact(table.column("instruction").to_pylist())
    expected, _ = ref.dedup(table, "instruction", rep, repeat, "exact", "id")
    keep = [r for r in expected.to_pylist() if r["quality"] in ("good", "excellent", "average")]
    import regex

    keep = [r for r in keep if not regex.search(r"mu\s*$", r["instruction"])]
    expected, _ = ref.sort(pa.Table.from_pylist(keep), "response", "length", True, 150)
    expected, _ = ref.sample(expected, 42, fraction=1.0, shuffle=True)
    assert read_output(tmp_path / "run").to_pylist() == expected.to_pylist()
    assert len(keep) > 300
    stages = {s["label"]: s for s in result.manifest["stages"]}
    assert stages["sort"]["filtered"] == {"not_in_top_150": len(keep) - 150}
    # a global stage's dropped rows are read back from the stage before it, by position
    dropped = list(Run(tmp_path / "run").iter_dropped("sort"))
    assert len(dropped) == len(keep) - 150
    assert {json.loads(d["row"])["id"] for d in dropped} == {r["id"] for r in keep} - {
        r["id"] for r in expected.to_pylist()
    }
    # and a filter's (on the Arrow path) from the same shard of the stage before
    dropped = list(Run(tmp_path / "run").iter_dropped("filter"))
    assert dropped and all(json.loads(d["row"])["quality"] not in ("good", "excellent", "average") for d in dropped)
    assert len(dropped) == stages["filter"]["rows_in"] - stages["filter"]["rows_out"]


def test_a_resume_recomputes_shards_that_went_missing_or_were_cut_short(write, tmp_path):
    """A run copied halfway or cut by a power failure: the resume finds the damaged shards by their
    footers and row counts, says so, recomputes them (and what depended on them), and the output is
    the same as before."""
    rows = make_table(300, seed=6).to_pylist()
    stages = """
        - {stage: filter, where: ["quality is not null"]}
        - {stage: sort, by: score, descending: true, top: 100}
        - {stage: filter, name: good, where: ["quality != poor"]}
        """
    path = pipeline_on(write, tmp_path, rows, 32, stages)
    run_pipeline(load_pipeline(path), tmp_path / "run")
    expected = read_output(tmp_path / "run").to_pylist()
    store = RunStore(tmp_path / "run")
    load, first = store.stage(0, "load"), store.stage(1, "filter")
    cut = first.shard(3)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # cut short
    load.shard(5).unlink()  # gone, its marker still there
    store.stage(3, "good").marker(1).unlink()  # the last stage lost a marker: its shard is orphaned

    notes: list[str] = []

    class Notes:
        def start(self, *a, **k): ...
        def advance(self, *a, **k): ...
        def stop(self): ...
        def note(self, message):
            notes.append(message)

    run_pipeline(load_pipeline(path), tmp_path / "run", progress=Notes())
    assert read_output(tmp_path / "run").to_pylist() == expected
    (note,) = [n for n in notes if "missing or damaged" in n]
    assert "00-load/shard-00005" in note and "01-filter/shard-00003" in note
    assert pq.read_table(cut).num_rows == json.loads(first.marker(3).read_text())["rows_out"]
    assert store.stage(3, "good").done(1)


def test_inspect_shows_rows_dropped_by_position_and_by_input_row(write, tmp_path):
    """Global stages and filters on their Arrow path keep no copy of a dropped row: inspect reads it
    from the stage before."""
    from click.testing import CliRunner

    from synth.cli import main

    rows = make_table(200, seed=8).to_pylist()
    stages = """
        - {stage: limit, n: 150}
        - {stage: filter, where: ["quality == excellent"]}
        """
    path = pipeline_on(write, tmp_path, rows, 16, stages)
    run_pipeline(load_pipeline(path), tmp_path / "run")
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "run"), "--dropped", "-n", "200"])
    assert shown.exit_code == 0, shown.output
    assert "beyond_first_150" in shown.output and "quality == excellent" in shown.output
    assert rows[199]["id"] in shown.output  # a row the limit dropped, read from the load stage
    poor = next(r for r in rows[:150] if r["quality"] == "poor")
    assert poor["id"] in shown.output  # a row the filter dropped, read from the limit stage
