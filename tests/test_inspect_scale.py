"""inspect and report on a run of a million rows, and on runs with a missing, cut or miscounted file.

The large run is written directly as a run directory (Parquet shards, markers, a manifest) with
numpy-made columns: what a 1M-row Magpie run leaves on disk, without generating it. Its stats are
checked against pyarrow compute over the whole table, its sampled rows against the positions
asked for (each row carries its own position in `id`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from synth import RunError
from synth.console import console
from synth.inspect_run import column_stats, show_run
from synth.integrity import check_run, forget_broken, require_intact
from synth.parquet import concat
from synth.runs import RowFiles
from synth.store import StageDir

CATEGORIES = ["Math", "Coding & Debugging", "Information seeking", "Creative writing", "Reasoning", "Planning"]
PIPELINE = "pipelines/magpie-sft.yaml"


def text_array(rng: np.random.Generator, lengths: np.ndarray, words: bytes) -> pa.Array:
    """One string per length, each a window of a buffer of random words (ASCII), made without a
    Python loop: the rows' text is one contiguous slice of the buffer cut at the offsets."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    start = int(rng.integers(0, len(words) - offsets[-1]))
    data = words[start : start + int(offsets[-1])]
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))


def random_words(rng: np.random.Generator, size: int) -> bytes:
    vocabulary = np.array([bytes(rng.integers(97, 123, n, dtype=np.uint8)) for n in rng.integers(2, 10, 2000)])
    return b" ".join(vocabulary[rng.integers(0, len(vocabulary), size // 6)])


def generated_chunk(rng, first: int, n: int, words: bytes, lengths: tuple[int, int, int, int]) -> pa.Table:
    """Rows first..first+n of the generated stage: Magpie's columns with numpy-drawn values."""
    ins_lo, ins_hi, res_lo, res_hi = lengths
    category = rng.integers(0, len(CATEGORIES) + 1, n)  # the last value: no category (null)
    reward = rng.normal(0, 3, n)
    seeds = rng.integers(0, 2**31, n)
    provenance = pa.StructArray.from_arrays(
        [pa.StructArray.from_arrays([pa.array(np.full(n, "Qwen2-7B-Instruct")), pa.array(seeds)], ["model", "seed"])],
        ["magpie"],
    )
    return pa.table(
        {
            "id": pa.array(np.arange(first, first + n, dtype=np.int64)),
            "instruction": text_array(rng, rng.integers(ins_lo, ins_hi, n), words),
            "response": text_array(rng, rng.integers(res_lo, res_hi, n), words),
            "task_category": pa.array(np.array([*CATEGORIES, ""])[category], mask=category == len(CATEGORIES)),
            "instruct_reward": pa.array(reward, mask=rng.random(n) < 0.01),
            "provenance": provenance,
        }
    )


def _parquet(table: pa.Table, path: Path) -> None:
    """As the runner writes shards: zstd, and no dictionary for long texts (it would fall back anyway)."""
    pq.write_table(table, path, compression="zstd", use_dictionary=["task_category"])


def _marker(stage: Path, index: int, **stats) -> None:
    record = {"rows_in": 0, "rows_out": 0, "filtered": {}, "failed": {}, "counters": {}, "seconds": 0.01, **stats}
    (stage / ".synth" / f"shard-{index:05d}.json").write_text(json.dumps(record))


def _stage_folder(root: Path, name: str) -> Path:
    path = root / "stages" / name
    (path / ".synth").mkdir(parents=True)
    (path / ".synth" / "stage.json").write_text(json.dumps({"label": name[3:], "fingerprint": "f" + name}))
    return path


def write_run(
    root: Path,
    rows: int,
    shard_rows: int = 1_000,
    output_rows: int = 10_000,
    drop_fraction: float = 0.05,
    lengths: tuple[int, int, int, int] = (10, 120, 20, 300),
    seed: int = 0,
) -> dict:
    """A complete run: 01-magpie (source) -> 02-tag (a per-row stage: the same shards, hard-linked)
    -> 03-dedup (global: drops `drop_fraction` of the rows, stored by position) -> output. Written
    chunk by chunk (a chunk is `output_rows` rows, a multiple of `shard_rows`)."""
    assert output_rows % shard_rows == 0
    rng = np.random.default_rng(seed)
    words = random_words(rng, min(64 * 2**20, 8 * output_rows * (lengths[1] + lengths[3])))
    generate, tag, dedup = (_stage_folder(root, n) for n in ("01-magpie", "02-tag", "03-dedup"))
    (root / "output").mkdir()
    dropped = np.sort(rng.choice(rows, size=int(rows * drop_fraction), replace=False))
    kept_total = rows - len(dropped)
    out_files = -(-kept_total // output_rows)
    pending: list[pa.Table] = []
    pending_rows = written = shard = out_shard = 0

    def flush(table: pa.Table) -> None:
        nonlocal shard, out_shard
        _parquet(table, root / "output" / f"data-{out_shard:05d}-of-{out_files:05d}.parquet")
        out_shard += 1
        for offset in range(0, table.num_rows, shard_rows):
            part = table.slice(offset, shard_rows)
            _parquet(part, dedup / f"shard-{shard:05d}.parquet")
            _marker(dedup, shard, rows_out=part.num_rows)
            shard += 1

    for first in range(0, rows, output_rows):
        n = min(output_rows, rows - first)
        chunk = generated_chunk(rng, first, n, words, lengths)
        for offset in range(0, n, shard_rows):
            index = (first + offset) // shard_rows
            part = chunk.slice(offset, shard_rows)
            _parquet(part, generate / f"shard-{index:05d}.parquet")
            os.link(generate / f"shard-{index:05d}.parquet", tag / f"shard-{index:05d}.parquet")
            _marker(generate, index, rows_in=part.num_rows, rows_out=part.num_rows)
            _marker(tag, index, rows_in=part.num_rows, rows_out=part.num_rows)
        keep = np.ones(n, dtype=bool)
        keep[dropped[(dropped >= first) & (dropped < first + n)] - first] = False
        pending.append(chunk.filter(pa.array(keep)))
        pending_rows += int(keep.sum())
        while pending_rows >= output_rows or (first + n == rows and pending_rows):
            table = pa.concat_tables(pending)
            flush(table.slice(0, output_rows))
            written += min(output_rows, table.num_rows)
            pending = [table.slice(output_rows)]
            pending_rows = pending[0].num_rows
    shards = -(-rows // shard_rows)
    first_marker = json.loads((dedup / ".synth" / "shard-00000.json").read_text())
    _marker(dedup, 0, **{**first_marker, "rows_in": rows, "filtered": {"duplicate": len(dropped)}})
    pq.write_table(
        pa.table(
            {
                "reason": pa.array(["duplicate"] * len(dropped)),
                "detail": pa.array([""] * len(dropped)),
                "failed": pa.array(np.zeros(len(dropped), dtype=bool)),
                "row": pa.nulls(len(dropped), pa.string()),
                "position": pa.array(dropped.astype(np.int64)),
            }
        ),
        dedup / ".synth" / "shard-00000.dropped.parquet",
    )
    (dedup / ".synth" / "complete.json").write_text(json.dumps({"rows_in": rows, "rows_out": kept_total}))

    def entry(label: str, stage: str, kind: str, rows_in: int, rows_out: int, **more) -> dict:
        counts = {"rows_in": rows_in, "rows_out": rows_out, "filtered": {}, "failed": {}, "counters": {}}
        return {
            "label": label,
            "stage": stage,
            "kind": kind,
            **counts,
            "wall_seconds": 1.0,
            "busy_seconds": 1.0,
            **more,
        }

    manifest = {
        "synth_manifest": 1,
        "name": "magpie-scale",
        "pipeline_file": PIPELINE,
        "fingerprint": "0123456789abcdef",
        "seed": 42,
        "config": "name: magpie-scale\n",
        "sessions": [{"started": "2026-11-29T00:00:00+00:00", "status": "complete", "seconds": 1.0}],
        "status": "complete",
        "stages": [
            entry("magpie", "magpie", "source", 0, rows),
            entry("tag", "tag", "map", rows, rows),
            entry("dedup", "dedup", "global", rows, kept_total, filtered={"duplicate": len(dropped)}),
        ],
        "output": {"path": "output", "rows": kept_total, "format": "raw"},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "pipeline.yaml").write_text(manifest["config"])
    return {"rows": rows, "kept": kept_total, "dropped": dropped, "shards": shards}


def synth(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "synth.cli", *args], capture_output=True, text=True, env=env)


def reference_stats(table: pa.Table) -> dict[str, str]:
    """The stats as inspect computed them before, with pyarrow compute over the whole table."""
    stats = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_string(column.type):
            lengths = pc.utf8_length(column)
            text = (
                f"text: chars min {pc.min(lengths).as_py()}, mean {pc.mean(lengths).as_py() or 0:,.0f}, "
                f"max {pc.max(lengths).as_py()}; distinct {pc.count_distinct(column).as_py():,}"
            )
        elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            text = f"number: min {pc.min(column).as_py()}, mean {pc.mean(column).as_py()}, max {pc.max(column).as_py()}"
        else:
            text = str(column.type)
        stats[name] = text + (f"; {column.null_count:,} null" if column.null_count else "")
    return stats


def _without_mean(text: str) -> str:
    """A number column's mean is summed in a different order by polars: equal to about 1e-12."""
    return text.split(", mean")[0] + text.split(", max")[1] if text.startswith("number") else text


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("big") / "run"
    root.mkdir()
    return root, write_run(root, rows=1_000_000, shard_rows=1_000, output_rows=10_000)


def test_inspect_a_million_rows(big):
    root, info = big
    done = synth("inspect", str(root), "-n", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert f"output: {info['kept']:,} rows" in out
    table = concat([pq.read_table(p) for p in sorted((root / "output").glob("*.parquet"))])
    rows = RowFiles(check_run(root).output.parts)
    for name, text in column_stats(rows):
        expected = reference_stats(table)[name]
        assert _without_mean(text) == _without_mean(expected), name
        assert f"  {name}: {text}" in out
        if text.startswith("number"):
            mean, reference = (float(t.split("mean ")[1].split(",")[0]) for t in (text, expected))
            assert mean == pytest.approx(reference, rel=1e-9, abs=1e-9)
    assert "task_category: text" in out and "null" in out.split("task_category:")[1].split("\n")[0]
    first_ids = table.column("id").slice(0, 2).to_pylist()
    assert [json.loads(s)["id"] for s in _json_blocks(out)] == first_ids


def _json_blocks(out: str) -> list[str]:
    blocks, current = [], None
    for line in out.splitlines():
        if line == "{":
            current = [line]
        elif current is not None:
            current.append(line)
            if line == "}":
                blocks.append("\n".join(current))
                current = None
    return blocks


def test_rows_by_seeded_position_read_only_those_rows(big):
    root, info = big
    kept = np.setdiff1d(np.arange(info["rows"]), info["dropped"])
    rows = RowFiles(check_run(root).output.parts)
    picked = rows.sample(50, seed=7)
    positions = np.sort(np.random.default_rng(7).choice(rows.num_rows, size=50, replace=False))
    assert [r["id"] for r in picked] == kept[positions].tolist()
    assert picked == rows.sample(50, seed=7) and picked != rows.sample(50, seed=8)
    with console.capture() as captured:
        show_run(root, n=3, seed=11)
    shown = [json.loads(b)["id"] for b in _json_blocks(captured.get())]
    positions = np.sort(np.random.default_rng(11).choice(rows.num_rows, size=3, replace=False))
    assert shown == kept[positions].tolist() and "3 rows picked at random (seed 11)" in captured.get()
    last = rows.rows_at([rows.num_rows - 1, 0])
    assert [r["id"] for r in last] == [kept[-1], kept[0]]


def test_dropped_rows_stored_by_position_are_read_from_the_previous_stage(big):
    root, info = big
    done = synth("inspect", str(root), "--stage", "dedup", "--dropped", "-n", "3")
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert out.count("03-dedup filtered: duplicate") == 3
    # The row at each dropped position of 02-tag: its id is that position.
    assert [json.loads(b)["id"] for b in _json_blocks(out)] == info["dropped"][:3].tolist()


def test_report_on_a_million_rows(big, tmp_path):
    pytest.importorskip("matplotlib")
    from synth.report import build_report

    root, info = big
    page = build_report(root, tmp_path / "report").read_text()
    expected = {"rows_per_stage", "dropped", "time", "length_instruction", "length_response", "categories"}
    assert {p.stem for p in (tmp_path / "report").glob("*.png")} == expected | {"score_instruct_reward"}
    assert f"{info['kept']:,} rows out" in page and "3 of 950,000 rows, picked at random (seed 42)" in page


def test_stats_equal_pyarrow_over_shards_of_mixed_schemas(tmp_path):
    """Shards as a real run leaves them: an empty one with no columns, a column null in one shard
    and text in another, ints in one and floats in another, a column some shards lack."""
    stage = StageDir(tmp_path / "stages" / "01-x")
    stage.meta.mkdir(parents=True)
    tables = [
        pa.table({"a": pa.array([1, 2]), "t": pa.nulls(2, pa.string()), "s": pa.array([{"k": 1}, None])}),
        pa.table({}),
        pa.table({"a": pa.array([2.5]), "t": pa.array(["héllo"]), "extra": pa.array([True])}),
        pa.table({"a": pa.array([None, 7], pa.int64()), "t": pa.array(["x", None]), "s": pa.array([{"k": 3}] * 2)}),
    ]
    for i, table in enumerate(tables):
        pq.write_table(table, stage.shard(i))
        _marker(stage.path, i, rows_out=table.num_rows)
    rows = RowFiles(check_run_stage(stage))
    whole = concat([pq.read_table(stage.shard(i)) for i in range(len(tables))])
    assert dict(column_stats(rows)) == reference_stats(whole)
    assert rows.rows_at(range(rows.num_rows)) == whole.to_pylist()
    assert rows.head(3) == whole.slice(0, 3).to_pylist()
    for name in whole.column_names:  # a column some files lack still has a value (null) for each of their rows
        assert rows.scan([name]).collect().height == whole.num_rows


def check_run_stage(stage: StageDir):
    from synth.integrity import check_stage

    checked = check_stage(stage)
    assert not checked.problems
    return checked.parts


# ---- broken runs: named by file, with the command that recomputes them ----


@pytest.fixture
def small(tmp_path) -> Path:
    root = tmp_path / "run"
    root.mkdir()
    write_run(root, rows=5_000, shard_rows=500, output_rows=1_000, drop_fraction=0.1)
    return root


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _shrink(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 3), path)


BREAKS = {
    "missing": (lambda p: p.unlink(), "stages/02-tag/shard-00004.parquet is missing (its marker says 500 rows)"),
    "truncated": (
        _cut,
        "stages/02-tag/shard-00004.parquet is truncated or corrupt (its Parquet footer does not read) "
        "(its marker says 500 rows)",
    ),
    "miscounted": (_shrink, "stages/02-tag/shard-00004.parquet has 497 rows where its marker says 500"),
}


@pytest.mark.parametrize("kind", list(BREAKS))
def test_a_broken_shard_is_named_with_the_command_that_recomputes_it(small, kind):
    breaker, problem = BREAKS[kind]
    shard = small / "stages" / "02-tag" / "shard-00004.parquet"
    shard.unlink()  # a hard link to 01-magpie's shard: break this stage's copy only
    pq.write_table(pq.read_table(small / "stages" / "01-magpie" / "shard-00004.parquet"), shard)
    breaker(shard)
    message = f"error: {small} is damaged: {problem}; recompute it with: synth run {PIPELINE} -o {small}"
    with pytest.raises(RunError) as info:
        require_intact(small)
    assert f"error: {info.value}" == message
    for command in (["inspect", str(small)], ["inspect", str(small), "--dropped"], ["report", str(small)]):
        done = synth(*command)
        assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == message, command
    assert forget_broken(small / "stages" / "02-tag") == [4]
    assert not (small / "stages" / "02-tag" / ".synth" / "shard-00004.json").exists() and not shard.exists()
    assert forget_broken(small / "stages" / "02-tag") == []


def test_other_missing_files_are_named(small):
    dedup = small / "stages" / "03-dedup"
    (dedup / ".synth" / "shard-00000.dropped.parquet").unlink()
    (small / "output" / "data-00002-of-00005.parquet").unlink()
    (dedup / "shard-00003.parquet").unlink()
    (dedup / ".synth" / "shard-00003.json").unlink()  # a shard gone with its marker: a gap in a complete run
    with pytest.raises(RunError) as info:
        require_intact(small)
    assert str(info.value) == (
        f"{small} is damaged: stages/03-dedup/.synth/shard-00000.dropped.parquet is missing (its marker says 500 "
        "rows); stages/03-dedup/shard-00003.parquet is missing, and so is its marker; "
        "output/data-00002-of-00005.parquet is missing; "
        f"recompute them with: synth run {PIPELINE} -o {small}"
    )
    assert forget_broken(dedup) == [0]  # the shard with the lost dropped rows; the gap has no marker to forget


def test_a_shard_gone_with_its_marker_at_the_end_is_counted(small):
    tag = small / "stages" / "02-tag"
    (tag / "shard-00009.parquet").unlink()
    (tag / ".synth" / "shard-00009.json").unlink()
    with pytest.raises(RunError, match=r"stages/02-tag holds 4,500 rows in its shards where the manifest says 5,000"):
        require_intact(small)


def test_checking_fifteen_thousand_shards_reads_only_footers(tmp_path):
    """The check reads a footer a file; with 15,625 shards (4M rows at the default batch size of
    256) it answers without reading rows. The timing is printed, not asserted (shared machine)."""
    import time

    stage = StageDir(tmp_path / "stages" / "01-x")
    stage.meta.mkdir(parents=True)
    table = pa.table({"n": pa.array(np.arange(256))})
    pq.write_table(table, stage.shard(0))
    for i in range(15_625):
        if i:
            os.link(stage.shard(0), stage.shard(i))
        _marker(stage.path, i, rows_out=256)
    started = time.perf_counter()
    checked = check_run_stage(stage)
    print(f"checked 15,625 shards in {time.perf_counter() - started:.2f} s")
    assert len(checked) == 15_625 and sum(p.rows for p in checked) == 4_000_000


def test_dropped_rows_of_both_kinds_show_with_their_reasons(small):
    """A per-row stage's dropped rows carry a JSON copy of the row; a global stage's, its position."""
    tag = small / "stages" / "02-tag"
    pq.write_table(
        pa.table(
            {
                "reason": ["too_short [x]"],
                "detail": ["len 3 < 5"],
                "failed": [False],
                "row": [json.dumps({"id": -1, "instruction": "hey"})],
            }
        ),
        tag / ".synth" / "shard-00002.dropped.parquet",
    )
    marker = tag / ".synth" / "shard-00002.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "filtered": {"too_short [x]": 1}}))
    done = synth("inspect", str(small), "--dropped", "-n", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "02-tag filtered: too_short [x]  len 3 < 5" in out and "03-dedup filtered: duplicate" in out
    dropped = pq.read_table(small / "stages" / "03-dedup" / ".synth" / "shard-00000.dropped.parquet")
    positions = dropped.column("position").to_numpy().copy()
    assert [json.loads(b)["id"] for b in _json_blocks(out)] == [-1, positions[0]]
    positions[0] = 5_000  # past the 5,000 rows of 02-tag
    pq.write_table(
        dropped.set_column(4, "position", pa.array(positions)),
        small / "stages" / "03-dedup" / ".synth" / "shard-00000.dropped.parquet",
    )
    done = synth("inspect", str(small), "--stage", "dedup", "--dropped")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: stages/03-dedup/.synth/shard-00000.dropped.parquet names row 5,000 of 02-tag, which holds 5,000 "
        f"rows; recompute it with: synth run {PIPELINE} -o {small}"
    )
