"""Export a finished run as a training dataset, with a dataset card.

Formats are the ones TRL reads without reshaping:
- `sft`: `messages`, a list of {role, content} (built from instruction/response when needed);
- `preference`: `prompt`, `chosen`, `rejected` as message lists (DPO's conversational format:
  the prompt is the user turn, after the run's `system` turn when it has one; chosen and rejected
  are one assistant turn each), plus `score_chosen`, `score_rejected`, `margin` and `rationale`
  when the run has them;
- `kto`: `prompt`, `completion` (message lists) and a boolean `label`; each preference pair
  becomes two rows, or a run's own `label` column is used;
- `raw`: every column as the run made it.
Files are Parquet (default) or JSONL, split into train/test with a seeded shuffle of the prompts
(all rows of one prompt land in the same split).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from .card import write_card
from .errors import RunError
from .pipeline import read_output
from .records import conversation
from .store import RunStore

Format = Literal["sft", "preference", "kto", "raw"]
# The files an export writes (and so replaces): a split name, a shard suffix, a data extension.
_DATA_FILE = re.compile(r"^(?:train|test|validation|valid|dev|eval)(?:-\d{5}-of-\d{5})?\.(?:parquet|jsonl|json|csv)$")


# Columns a preference export keeps beside prompt/chosen/rejected when the run has them.
PREFERENCE_EXTRAS = ("score_chosen", "score_rejected", "margin", "rationale")


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _prompt(row: dict, column: str) -> list[dict]:
    """The prompt turns: the row's `system` text first when it has one, then the user turn."""
    system = row.get("system")
    return ([{"role": "system", "content": system}] if system else []) + _user(row[column])


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _need(row: dict, *columns: str, fmt: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise RunError(f"the '{fmt}' format needs column(s) {', '.join(missing)}; the run has: {', '.join(row)}")


def to_sft(rows: list[dict], instruction: str = "instruction", response: str = "response") -> list[dict]:
    out = []
    for row in rows:
        if row.get("messages"):
            out.append({"messages": row["messages"]})
            continue
        _need(row, instruction, response, fmt="sft")
        out.append({"messages": conversation(row, instruction, response)})
    return out


def to_preference(rows: list[dict], prompt: str = "instruction") -> list[dict]:
    out = []
    for row in rows:
        _need(row, prompt, "chosen", "rejected", fmt="preference")
        record = {
            "prompt": _prompt(row, prompt),
            "chosen": _assistant(row["chosen"]),
            "rejected": _assistant(row["rejected"]),
        }
        for column in PREFERENCE_EXTRAS:
            if column in row:
                record[column] = row[column]
        out.append(record)
    return out


def to_kto(rows: list[dict], prompt: str = "instruction") -> list[dict]:
    """A run's own `label` rows as they are; each pair as a desirable and an undesirable row.

    The undesirable row after pair i's desirable one is pair i+2's: TRL's KTOTrainer estimates its
    KL term from each row's prompt with the previous row's completion (rotated within a batch),
    and a pair's two rows side by side would make half of those the same prompt's own answers."""
    out, pairs = [], []
    for row in rows:
        if "label" in row:
            _need(row, prompt, "response", fmt="kto")
            out.append(
                {"prompt": _prompt(row, prompt), "completion": _assistant(row["response"]), "label": bool(row["label"])}
            )
            continue
        _need(row, prompt, "chosen", "rejected", fmt="kto")
        pairs.append(row)
    for i, row in enumerate(pairs):
        other = pairs[(i + 2) % len(pairs)]
        out.append({"prompt": _prompt(row, prompt), "completion": _assistant(row["chosen"]), "label": True})
        out.append({"prompt": _prompt(other, prompt), "completion": _assistant(other["rejected"]), "label": False})
    return out


def convert(rows: list[dict], fmt: Format, keep: list[str] | None = None) -> list[dict]:
    """Rows in `fmt`; `keep` names columns of the run to carry beside the format's own (tags, ids,
    scores for filtering later: TRL ignores extra columns), `["all"]` every one but provenance."""
    if fmt == "raw":
        return rows
    out = {"sft": to_sft, "preference": to_preference, "kto": to_kto}[fmt](rows)
    if not keep:
        return out
    if fmt == "kto":
        raise RunError("--keep-columns works with the sft and preference formats (a KTO row is half a pair)")
    columns = [c for c in (rows[0] if rows else {}) if c != "provenance"] if keep == ["all"] else keep
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise RunError(f"--keep-columns: the run has no column(s) {', '.join(missing)}; it has: {', '.join(rows[0])}")
    return [{**{c: row.get(c) for c in columns if c not in made}, **made} for row, made in zip(rows, out, strict=True)]


def _prompt_key(row: dict, index: int) -> str:
    """What makes two rows the same prompt: the instruction (or the first user turn)."""
    if isinstance(row.get("instruction"), str):
        return row["instruction"]
    messages = row.get("messages")
    if isinstance(messages, list):
        first = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        if first is not None:
            return str(first.get("content"))
    return f"\0row {index}"  # no prompt to group by: a group of its own


def split(rows: list[dict], test_size: float, seed: int) -> dict[str, list[dict]]:
    """A seeded train/test split that keeps every row of one prompt in the same split (a pair's
    two relabeled rows, the pairs `all_pairs` makes of one prompt, several samples of it), so the
    test split holds no prompt the model trained on. The test split takes whole prompts, in a
    seeded order, until it holds at least test_size of the rows."""
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


def _decontamination_reports(run_dir: Path) -> list[Path]:
    """The reports `decontaminate` stages wrote, so a published dataset says what it was checked against."""
    return [p for p in sorted(run_dir.glob("stages/*/.synth/decontamination.json")) if p.with_suffix(".md").exists()]


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: Format = "sft",
    *,
    file_format: str = "parquet",
    test_size: float = 0.0,
    seed: int = 42,
    license: str | None = None,
    keep_columns: list[str] | None = None,
) -> dict[str, int]:
    """Write the run's dataset in `fmt` to out_dir, with a README.md dataset card; returns rows per split."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    manifest = RunStore(run_dir).read_manifest()
    if manifest.get("status") != "complete":
        raise RunError(
            f"{run_dir} is not finished (status: {manifest.get('status')}): "
            f"run 'synth run' on its pipeline again to complete it"
        )
    # Split the run's rows, then convert: a KTO pair's two rows stay in the same split.
    splits = {
        name: convert(part, fmt, keep_columns)
        for name, part in split(read_output(run_dir).to_pylist(), test_size, seed).items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    written = set()
    for name, part in splits.items():
        if file_format == "jsonl":
            path = out_dir / f"{name}.jsonl"
            with open(path, "w", encoding="utf-8") as fh:
                for row in part:
                    fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        else:
            path = out_dir / f"{name}-00000-of-00001.parquet"
            table = pa.Table.from_pylist(part) if part else pa.table({})
            pq.write_table(table, path, compression="zstd")
        written.add(path.name)
    # An export replaces the folder's dataset: a test split left from an earlier export would be
    # loaded beside the new train split (and overlap it).
    for stale in out_dir.iterdir():
        if stale.name not in written and _DATA_FILE.match(stale.name):
            stale.unlink()
    counts = {name: len(part) for name, part in splits.items()}
    reports = [p.with_suffix(".md").read_text(encoding="utf-8") for p in _decontamination_reports(run_dir)]
    write_card(
        out_dir,
        manifest,
        read_output(run_dir),
        fmt=fmt,
        counts=counts,
        file_format=file_format,
        license=license,
        extra_sections=reports,
    )
    return counts
