"""The streaming output and export give exactly what the in-memory ones gave.

The reference below is the in-memory code as it was before the export streamed (split, convert,
format_output and their helpers, copied unchanged): it reads the whole run into a list of rows.
The streaming code reads a chunk of rows at a time; with chunks smaller than the files, and
files of different schemas, it must write the same rows in the same order, in every format, with
and without a test split, as Parquet and as JSONL (byte for byte).
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth import RunError
from synth.config import OutputSettings
from synth.export import export_run
from synth.outputs import write_output
from synth.parquet import concat
from synth.splits import split

# ---- the reference: the in-memory code, as it was ----


def ref_conversation(row: dict, instruction: str = "instruction", response: str = "response") -> list[dict]:
    system = row.get("system")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    messages += [{"role": "user", "content": row[instruction]}, {"role": "assistant", "content": row[response]}]
    turn = 2
    while row.get(f"instruction_{turn}") is not None and row.get(f"response_{turn}") is not None:
        messages += [
            {"role": "user", "content": row[f"instruction_{turn}"]},
            {"role": "assistant", "content": row[f"response_{turn}"]},
        ]
        turn += 1
    return messages


_LATER_TURN = re.compile(r"^(instruction|response)_\d+$")


def ref_format_output(table: pa.Table, output) -> pa.Table:
    if output.format == "raw":
        if output.columns:
            missing = [c for c in output.columns if c not in table.column_names]
            if missing and table.num_rows:
                raise RunError("missing")
            return table.select([c for c in output.columns if c in table.column_names])
        return table
    if "messages" in table.column_names or not table.num_rows:
        return table
    ins, res = output.instruction_column, output.response_column
    turns = [c for c in table.column_names if _LATER_TURN.match(c)]
    system = ["system"] if "system" in table.column_names else []
    rows = table.select([ins, res, *system, *turns]).to_pylist()
    return table.append_column("messages", pa.array([ref_conversation(r, ins, res) for r in rows]))


def _prompt(row: dict, column: str) -> list[dict]:
    system = row.get("system")
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": row[column]}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def ref_convert(rows: list[dict], fmt: str, keep: list[str] | None = None) -> list[dict]:
    if fmt == "raw":
        return rows
    if fmt == "sft":
        out = [
            {"messages": row["messages"]} if row.get("messages") else {"messages": ref_conversation(row)}
            for row in rows
        ]
    elif fmt == "preference":
        out = []
        for row in rows:
            record = {
                "prompt": _prompt(row, "instruction"),
                "chosen": _assistant(row["chosen"]),
                "rejected": _assistant(row["rejected"]),
            }
            for column in ("score_chosen", "score_rejected", "margin", "rationale"):
                if column in row:
                    record[column] = row[column]
            out.append(record)
    else:
        out, pairs = [], []
        for row in rows:
            if "label" in row:
                out.append(
                    {
                        "prompt": _prompt(row, "instruction"),
                        "completion": _assistant(row["response"]),
                        "label": bool(row["label"]),
                    }
                )
                continue
            pairs.append(row)
        for i, row in enumerate(pairs):
            other = pairs[(i + 2) % len(pairs)]
            out.append({"prompt": _prompt(row, "instruction"), "completion": _assistant(row["chosen"]), "label": True})
            out.append(
                {"prompt": _prompt(other, "instruction"), "completion": _assistant(other["rejected"]), "label": False}
            )
    if not keep:
        return out
    columns = [c for c in (rows[0] if rows else {}) if c != "provenance"] if keep == ["all"] else keep
    return [{**{c: row.get(c) for c in columns if c not in made}, **made} for row, made in zip(rows, out, strict=True)]


def _prompt_key(row: dict, index: int) -> str:
    if isinstance(row.get("instruction"), str):
        return row["instruction"]
    messages = row.get("messages")
    if isinstance(messages, list):
        first = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        if first is not None:
            return str(first.get("content"))
    return f"\0row {index}"


def ref_split(rows: list[dict], test_size: float, seed: int) -> dict[str, list[dict]]:
    if not test_size:
        return {"train": rows}
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(_prompt_key(row, i), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(rows) * test_size)) if rows else 0
    test: set[int] = set()
    for group in order:
        if len(test) >= n_test:
            break
        test.update(group)
    return {
        "train": [r for i, r in enumerate(rows) if i not in test],
        "test": [r for i, r in enumerate(rows) if i in test],
    }


def ref_length_stats(values: list) -> str | None:
    lengths = [len(v) for v in values if isinstance(v, str)]
    if not lengths:
        return None
    return (
        f"min {min(lengths):,}, median {statistics.median(lengths):,.0f}, "
        f"mean {statistics.fmean(lengths):,.0f}, max {max(lengths):,}"
    )


# ---- a run of a few thousand rows, written with pyarrow ----

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "I",
    "his",
    "they",
    "be",
    "at",
    "one",
    "have",
    "this",
]


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + rng.choice(["", " é", " 日本", " 🙂"])


def magpie_rows(n: int, seed: int = 0) -> list[dict]:
    """SFT-like rows: repeated prompts, system texts (some empty), second turns, rows that carry
    their own messages, rows with no prompt at all, categories, scores, provenance."""
    rng = random.Random(seed)
    prompts = [_text(rng, 3, 30) for _ in range(n // 3)]
    rows = []
    for i in range(n):
        row = {
            "instruction": rng.choice(prompts) if rng.random() < 0.9 else None,
            "response": _text(rng, 1, 60),
            "system": rng.choice([None, None, "", "Be brief."]),
            "task_category": rng.choice(["Math", "Coding", "Reasoning", None]),
            "difficulty": rng.choice(["easy", "hard"]),
            "score": rng.random(),
            "provenance": {"respond": {"seed": i, "model": "m"}},
        }
        row["response_length"] = len(row["response"])  # a column named like a turn, not one
        if rng.random() < 0.2:
            row["instruction_2"] = _text(rng, 2, 9)
            row["response_2"] = _text(rng, 2, 9) if rng.random() < 0.8 else None
        if rng.random() < 0.15:
            user = rng.choice(prompts)
            row["messages"] = [{"role": "user", "content": user}, {"role": "assistant", "content": "ok"}]
        elif rng.random() < 0.05:
            row["messages"] = []
        rows.append(row)
    return rows


def preference_rows(n: int, seed: int = 1, label: bool = False) -> list[dict]:
    rng = random.Random(seed)
    prompts = [_text(rng, 3, 20) for _ in range(n // 4)]
    rows = []
    for _ in range(n):
        row = {"instruction": rng.choice(prompts), "system": rng.choice([None, "Answer in French."])}
        if label:
            row |= {"response": _text(rng, 2, 30), "label": rng.random() < 0.5}
        else:
            row |= {
                "chosen": _text(rng, 2, 30),
                "rejected": _text(rng, 2, 30),
                "score_chosen": rng.random(),
                "score_rejected": rng.random() - 1,
                "margin": rng.random() if rng.random() < 0.9 else None,
                "task_category": rng.choice(["Math", "Coding"]),
            }
        rows.append(row)
    return rows


def write_files(folder: Path, rows: list[dict], sizes: list[int], name: str = "data-{k:05d}.parquet") -> list[Path]:
    """Rows in files of these sizes, each file's schema inferred from its own rows (so a column
    absent from a file's rows is absent from that file, a column of Nones is null-typed)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for k, size in enumerate(sizes):
        part = rows[start : start + size]
        path = folder / name.format(k=k)
        if part:
            keys = list(dict.fromkeys(key for row in part for key in row))
            table = pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in part])
        else:
            table = pa.table({})
        pq.write_table(table, path)
        paths.append(path)
        start += size
    assert start == len(rows)
    return paths


def make_run(root: Path, rows: list[dict], sizes: list[int]) -> Path:
    write_files(root / "output", rows, sizes)
    (root / "manifest.json").write_text(json.dumps({"synth_manifest": 1, "name": "scale", "status": "complete"}))
    return root


def ref_rows(run: Path) -> list[dict]:
    return concat([pq.read_table(p) for p in sorted((run / "output").glob("*.parquet"))]).to_pylist()


def written(out: Path, name: str, file_format: str) -> tuple[list[dict], list[str]]:
    if file_format == "jsonl":
        return [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()], []
    files = sorted(out.glob(f"{name}-*.parquet"))
    table = concat([pq.read_table(p) for p in files])
    return table.to_pylist(), table.column_names


def expected(part: list[dict], file_format: str) -> tuple[list[dict], list[str]]:
    """What the in-memory export wrote for a split: from_pylist of the rows (JSONL: the rows)."""
    if file_format == "jsonl":
        return json.loads(json.dumps(part, ensure_ascii=False, default=str)), []
    table = pa.Table.from_pylist(part) if part else pa.table({})
    return table.to_pylist(), table.column_names


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    sizes = [700, 0, 1, 1299, 1000]  # 3,000 rows in files of uneven sizes (one empty)
    return {
        "sft": make_run(root / "sft", magpie_rows(3000), sizes),
        "plain": make_run(root / "plain", [_without(r, "messages") for r in magpie_rows(3000, seed=2)], sizes),
        "preference": make_run(root / "preference", preference_rows(3000), sizes),
        "labels": make_run(root / "labels", preference_rows(1000, label=True), [400, 600]),
    }


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


CASES = [
    ("plain", "sft", None),  # messages built in Arrow
    ("plain", "sft", ["all"]),
    ("sft", "sft", None),  # the run's own messages where a row has them, built row by row where not
    ("sft", "sft", ["task_category", "score"]),
    ("sft", "sft", ["all"]),
    ("sft", "raw", None),
    ("preference", "preference", None),
    ("preference", "preference", ["all"]),
    ("preference", "kto", None),
    ("labels", "kto", None),
    ("preference", "raw", None),
]


@pytest.mark.parametrize(("run", "fmt", "keep"), CASES)
@pytest.mark.parametrize("file_format", ["parquet", "jsonl"])
def test_streaming_export_writes_the_rows_the_in_memory_export_wrote(runs, tmp_path, run, fmt, keep, file_format):
    rows = ref_rows(runs[run])
    for test_size, seed, chunk_rows in ((0.0, 42, 64), (0.1, 3, 7), (0.02, 11, 1000)):
        parts = {name: ref_convert(part, fmt, keep) for name, part in ref_split(rows, test_size, seed).items()}
        out = tmp_path / f"{test_size}-{chunk_rows}"
        counts = export_run(
            runs[run],
            out,
            fmt,
            file_format=file_format,
            test_size=test_size,
            seed=seed,
            keep_columns=keep,
            chunk_rows=chunk_rows,
        )
        assert counts == {name: len(part) for name, part in parts.items()}
        for name, part in parts.items():
            got, got_columns = written(out, name, file_format)
            want, want_columns = expected(part, file_format)
            assert got_columns == want_columns
            assert got == want, (name, test_size)
        if file_format == "jsonl":  # byte for byte
            for name, part in parts.items():
                text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in part)
                assert (out / f"{name}.jsonl").read_text(encoding="utf-8") == text


def test_the_split_is_the_in_memory_split(runs):
    """Prompts grouped by first appearance, a seeded shuffle of the groups, whole groups to test:
    the same rows in the same order, for many seeds and sizes (and a list of rows as before)."""
    rows = ref_rows(runs["sft"])
    for seed in range(20):
        for test_size in (0.01, 0.2, 0.5, 0.97):
            assert split(rows, test_size, seed) == ref_split(rows, test_size, seed)
    assert split([], 0.2, 1) == ref_split([], 0.2, 1) == {"train": [], "test": []}


def test_a_large_split_is_written_as_several_files_that_load_as_one(runs, tmp_path, monkeypatch):
    import synth.export

    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(synth.export, "MAX_FILE_BYTES", 50_000)
    counts = export_run(runs["sft"], tmp_path / "out", "sft", test_size=0.1, seed=5, chunk_rows=100)
    train = sorted(p.name for p in (tmp_path / "out").glob("train-*.parquet"))
    assert len(train) > 3 and train[0] == f"train-00000-of-{len(train):05d}.parquet"
    assert [pq.read_metadata(tmp_path / "out" / n).num_rows for n in train][:-1] == [
        -(-counts["train"] // len(train))
    ] * (len(train) - 1)
    parts = ref_split(ref_rows(runs["sft"]), 0.1, 5)
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"))
    assert ds["train"]["messages"] == [r["messages"] for r in ref_convert(parts["train"], "sft")]
    assert ds["test"].num_rows == counts["test"]
    # a second, small export replaces every file of the first
    monkeypatch.setattr(synth.export, "MAX_FILE_BYTES", 500 * 1024 * 1024)
    export_run(runs["sft"], tmp_path / "out", "sft")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "train-00000-of-00001.parquet"]


def test_the_card_statistics_are_the_in_memory_ones(runs, tmp_path):
    export_run(runs["sft"], tmp_path / "out", "sft", chunk_rows=50)
    card = (tmp_path / "out" / "README.md").read_text()
    rows = ref_rows(runs["sft"])
    for column in ("instruction", "response"):
        assert f"- `{column}` length in characters: {ref_length_stats([r[column] for r in rows])}\n" in card
    counts = Counter(r["task_category"] for r in rows).most_common()
    table = "\n".join(f"| {v if v is not None else '(none)'} | {n:,} |" for v, n in counts)
    assert "| task category | rows |\n|---|---:|\n" + table + "\n" in card


@pytest.mark.parametrize("output", [OutputSettings(format="sft"), OutputSettings(), OutputSettings(columns=["score"])])
def test_the_streamed_output_is_the_in_memory_output(tmp_path, output):
    """The runner's final output: shards of uneven sizes and schemas (an empty one, a column
    missing from some, int and float), formatted and cut into files of rows_per_file rows."""
    rows = [{k: v for k, v in r.items() if k != "messages"} for r in magpie_rows(2500, seed=4)]
    for i, row in enumerate(rows):
        row["score"] = i if i < 900 else float(i) / 2  # int64 in the first shards, double later
    shards = write_files(tmp_path / "stage", rows, [300, 0, 600, 1, 1599], name="shard-{k:05d}.parquet")
    for chunk_rows in (7, 4096):
        out = tmp_path / f"out-{chunk_rows}" / "output"
        out.parent.mkdir()
        assert write_output(shards, output, out, rows_per_file=1000, chunk_rows=chunk_rows) == 2500
        reference = ref_format_output(concat([pq.read_table(p) for p in shards]), output)
        names = sorted(p.name for p in out.iterdir())
        assert names == [f"data-{k:05d}-of-00003.parquet" for k in range(3)]
        for k, name in enumerate(names):
            got = pq.read_table(out / name)
            want = reference.slice(k * 1000, 1000)
            assert got.column_names == want.column_names
            assert got.to_pylist() == want.to_pylist()
            assert pq.read_metadata(out / name).num_row_groups == 1  # chunks of 7 rows gathered


def test_an_empty_output_is_one_empty_file(tmp_path):
    shards = write_files(tmp_path / "stage", [], [0, 0], name="shard-{k:05d}.parquet")
    assert write_output(shards, OutputSettings(format="sft"), tmp_path / "output", rows_per_file=10) == 0
    assert [p.name for p in (tmp_path / "output").iterdir()] == ["data-00000-of-00001.parquet"]
    assert pq.read_table(tmp_path / "output" / "data-00000-of-00001.parquet").num_rows == 0


def test_a_missing_or_truncated_shard_is_named(tmp_path):
    shards = write_files(tmp_path / "stage", magpie_rows(20), [10, 10], name="shard-{k:05d}.parquet")
    shards[1].write_bytes(shards[1].read_bytes()[:100])
    with pytest.raises(RunError, match=r"shard-00001\.parquet: missing or unreadable"):
        write_output(shards, OutputSettings(), tmp_path / "output", rows_per_file=10)
    shards[1].unlink()
    with pytest.raises(RunError, match=r"shard-00001\.parquet: missing or unreadable"):
        write_output(shards, OutputSettings(), tmp_path / "output", rows_per_file=10)
    assert not (tmp_path / "output").exists()


def test_a_failed_export_leaves_no_file(runs, tmp_path):
    with pytest.raises(RunError, match="the 'preference' format needs column"):
        export_run(runs["sft"], tmp_path / "new", "preference")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "train.jsonl").write_text("{}\n")
    with pytest.raises(RunError, match="--keep-columns: the run has no column"):
        export_run(runs["sft"], tmp_path / "old", "sft", keep_columns=["nope"], file_format="jsonl")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["train.jsonl"]
