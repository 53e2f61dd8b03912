"""Reading input files that a stranger may have chosen: every fault is one InputError.

Only a regular file, or a folder of them for the folder formats, is read (never /dev/zero, a FIFO or
a socket); a line or CSV row is bounded; every fault of an input (bad UTF-8 or JSON, uneven CSV
rows, damaged Parquet or gzip) is one InputError naming the file, the line where there is one, and
the fix. `peek` reads the first MB, which is what `synth validate` looks at.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count, islice
from pathlib import Path
from typing import IO, Any

from .errors import InputError, MissingDependency, SynthError
from .inputs import read_problem

Row = dict[str, Any]

FORMATS = ("jsonl", "json", "parquet", "csv", "hf")
FOLDER_FORMATS = ("parquet", "hf")
RESERVED = "provenance"  # each generated row's record of the stages that made it (stages/common.py)
PEEK_BYTES = 2**20  # what `synth validate` reads of an input file
MAX_LINE = 64 * 2**20  # one JSONL line or CSV row, unless SYNTH_MAX_LINE_MB says otherwise
MAX_LINE_ENV = "SYNTH_MAX_LINE_MB"
_END = "\ue000synth: end of the file\ue000"  # fed to the CSV reader after the last line (_iter_csv)


def max_line() -> int:
    """The longest JSONL line or CSV row read, in bytes: 64 MB, or $SYNTH_MAX_LINE_MB."""
    try:
        return max(int(float(os.environ.get(MAX_LINE_ENV, "")) * 2**20), 1)
    except ValueError:
        return MAX_LINE


MAX_FOLDER_ENTRIES = 100_000
# Files a folder input must hold some of: data files, or a saved dataset's (.arrow, dataset_info.json).
DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".gz", ".zst")


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "dataset_dict.json").exists()
            or any(path.glob("*/dataset_info.json"))
        ):
            return "hf"
        if any(path.glob("*.parquet")):
            return "parquet"
        return "hf"
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    return {
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".jsonl.gz": "jsonl",
        ".json": "json",
        ".parquet": "parquet",
        ".csv": "csv",
    }.get(suffix.lower(), "jsonl")


def input_path(raw: str, base_dir: Path) -> Path:
    """Where a `path:` points: `~` expanded, relative to the pipeline file."""
    path = Path(raw).expanduser()
    return path if path.is_absolute() else base_dir / path


def file_problem(path: Path, fmt: str, base_dir: Path) -> str | None:
    """Why `path` cannot be read as `fmt` (beyond the read policy): missing, a folder where one file
    is read, or not a regular file. Reading /dev/zero or a FIFO would never end."""
    if not path.exists():
        return f"{path} does not exist (paths are relative to the pipeline file)"
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        if fmt not in FOLDER_FORMATS:
            return f"{path} is a folder; format {fmt} reads one file: point path: at it"
        return _folder_problem(path, fmt, base_dir)
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file (a device, FIFO or socket); give a data file"
    return None


def _folder_problem(folder: Path, fmt: str, base_dir: Path) -> str | None:
    """pyarrow and datasets open what they find in a folder: each entry must be a regular file or a
    folder, each link must stay where the pipeline may read, and a saved dataset's state.json may
    name only files beside it."""
    entries, data = 0, False
    for dirpath, dirnames, filenames in os.walk(folder):
        data = data or any(name.lower().endswith(DATA_SUFFIXES) for name in filenames)
        for name in dirnames + filenames:
            entries += 1
            if entries > MAX_FOLDER_ENTRIES:
                return f"{folder} holds more than {MAX_FOLDER_ENTRIES:,} files and folders; point path: at fewer"
            problem = _entry_problem(Path(dirpath, name), base_dir)
            if problem:
                return problem
        if "state.json" in filenames:
            problem = _state_problem(Path(dirpath, "state.json"))
            if problem:
                return problem
    if entries == 0:
        return f"{folder} is an empty folder; put the data files in it, or point path: at a file"
    if fmt == "parquet" and not _parquet_files(folder):
        return f"{folder} holds no .parquet files"
    if not data:  # datasets would read notes.txt as rows of a `text` column, and every row fail
        shown = ", ".join(sorted(p.name for p in islice(folder.iterdir(), 4)))
        return (
            f"{folder} holds no data files (it has: {shown}); point path: at a .jsonl, .json, .csv or .parquet "
            "file, or a folder of them or of a saved Hugging Face dataset"
        )
    return None


def _entry_problem(entry: Path, base_dir: Path) -> str | None:
    if entry.is_symlink():
        refused = read_problem(entry, base_dir)
        if refused:
            return f"{entry} is a link that {refused}"
        if not entry.exists():
            return f"{entry} is a broken link; remove it"
    if not (entry.is_file() or entry.is_dir()):
        return f"{entry} is not a regular file (a device, FIFO or socket); remove it from the folder"
    return None


def _state_problem(state: Path) -> str | None:
    """datasets opens each file a state.json names joined to its folder: `../../x` would leave it."""
    try:
        with state.open("rb") as fh:
            data = json.loads(fh.read(PEEK_BYTES))
    except (OSError, ValueError, RecursionError):
        return None  # datasets reports an unreadable state.json itself
    files = data.get("_data_files") if isinstance(data, dict) else None
    for entry in files if isinstance(files, list) else []:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            return f"{state} names a data file outside its folder ({name!r}); save the dataset again"
    return None


def _parquet_files(folder: Path) -> list[Path]:
    """The .parquet files under a folder, in path order, walked as _folder_problem checked it."""
    return sorted(Path(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".parquet"))


# ---- readers: every fault an InputError naming the file ----


@contextmanager
def _reading(path: Path):
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: the gzip file is damaged or cut short ({exc}); compress it again") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


class _Lines:
    """The lines of a binary file as (number, text): UTF-8, each under MAX_LINE. A peek reads at most
    PEEK_BYTES and stops before a line it cannot read whole; `cut` then says whether the file went on."""

    def __init__(self, fh: IO[bytes], path: Path, peek: bool = False):
        self.fh, self.path, self.left = fh, path, PEEK_BYTES if peek else None
        self.cut = False

    def __iter__(self) -> Iterator[tuple[int, str]]:
        limit = max_line()
        for number in count(1):
            cap = limit if self.left is None else min(limit, self.left)
            raw = self.fh.readline(cap + 1)
            if not raw:
                return
            if len(raw) > cap:
                if self.left is not None:
                    self.cut = True
                    return
                raise InputError(
                    f"{self.path}:{number}: the line is longer than the limit of {limit / 2**20:g} MB for one JSONL "
                    f"line or CSV row; split it, or raise the limit with {MAX_LINE_ENV}={2 * limit // 2**20 or 1}"
                )
            if self.left is not None:
                self.left -= len(raw)
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
                raise InputError(f"{self.path}:{number}: {message}") from None
            yield number, text


def _json_value(text: str, where: str, fix: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg}); {fix}") from None
    except (ValueError, RecursionError) as exc:  # a number of 5,000 digits, nesting thousands deep
        raise InputError(f"{where}: cannot read this JSON ({exc}); {fix}") from None


def iter_jsonl(path: Path, peek: bool = False) -> Iterator[Row]:
    with _reading(path), _open(path) as fh:
        for number, line in _Lines(fh, path, peek):
            if not line.strip():
                continue
            row = _json_value(line, f"{path}:{number}", "fix or remove that line")
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
            yield row


def _iter_json(path: Path, peek: bool = False) -> Iterator[Row]:
    """A .json input is one list, read whole; a peek parses it only when it is small."""
    not_a_list = f"{path}: a .json input must hold a list of objects (use .jsonl for one per line)"
    with _reading(path), open(path, "rb") as fh:
        data = fh.read(PEEK_BYTES + 1) if peek else fh.read()
    if peek and len(data) > PEEK_BYTES:
        if not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            raise InputError(not_a_list)
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    items = _json_value(text, str(path), "fix the file")
    if not isinstance(items, list):
        raise InputError(not_a_list)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"{path}: item {index} of the list is a {type(item).__name__}; each must be an object")
        yield item


def _iter_csv(path: Path, peek: bool = False) -> Iterator[Row]:
    """Rows keyed by the header. A row with more or fewer fields than the header is an error
    (csv.DictReader would file the extras under None, or fill in None)."""
    csv.field_size_limit(max(csv.field_size_limit(), max_line()))  # long text fields are normal
    with _reading(path), _open(path) as fh:
        lines = _Lines(fh, path, peek)

        def texts() -> Iterator[str]:
            yield from (text for _, text in lines)
            if not lines.cut:  # a quote left open swallows this line: that is how it is found
                yield _END + "\n"

        reader = csv.reader(texts())
        try:
            header = next(reader, None)
            header = None if header == [_END] else header  # an empty file
            _check_unclosed(path, 1, header)
            _check_header(path, header)
            held: tuple[int, list[str]] | None = None
            end = reader.line_num
            for record in reader:
                start, end = end + 1, reader.line_num
                if record == [_END]:
                    break
                _check_unclosed(path, start, record)
                if held is not None:
                    yield _csv_row(path, header, *held)  # type: ignore[arg-type]
                held = (start, record) if record else None  # blank lines are skipped
            if held is not None and not lines.cut:  # a peek may have stopped inside the last row
                yield _csv_row(path, header, *held)  # type: ignore[arg-type]
        except csv.Error as exc:
            raise InputError(f"{path}:{reader.line_num}: not valid CSV ({exc}); fix that line") from None


def _check_unclosed(path: Path, line: int, record: list[str] | None) -> None:
    if record and any(_END in field for field in record):
        raise InputError(
            f'{path}:{line}: a quoted field opened in this row is never closed (its " runs to the end of the file); '
            'close it, or write a " inside a quoted field as ""'
        )


def _check_header(path: Path, header: list[str] | None) -> None:
    if not header:
        raise InputError(f"{path}: the first line is empty; a CSV input starts with a header row naming its columns")
    for index, name in enumerate(header):
        if not name.strip():
            raise InputError(f"{path}:1: column {index + 1} of the header has no name; name it")
        if name in header[:index]:
            raise InputError(f"{path}:1: the header names the column '{name}' twice; rename one")


def _csv_row(path: Path, header: list[str], line: int, record: list[str]) -> Row:
    if len(record) != len(header):
        raise InputError(
            f"{path}:{line}: {len(record)} fields where the header has {len(header)}; fix that line "
            "(a field holding a comma or a line break must be in double quotes)"
        )
    return dict(zip(header, record, strict=True))


def _iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _parquet_files(path) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path} holds no .parquet files")
    for file in files:
        try:
            for record_batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
                yield from record_batch.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{file}: not a readable Parquet file ({exc}); write it again") from None


def parquet_columns(path: Path, files: int = 1) -> list[str]:
    """The columns of a Parquet input, from the footer of its first file; the footers of the next
    ones are read too when `files` > 1 (a peek: no row is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    found = _parquet_files(path) if path.is_dir() else [path]
    if not found:
        raise InputError(f"{path} holds no .parquet files")
    names: list[str] = []
    for file in found[:files]:
        try:
            columns = pq.ParquetFile(file).schema_arrow.names
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{file}: not a readable Parquet file ({exc}); write it again") from None
        names = names or columns
    return names


def _peek_parquet(path: Path) -> Iterator[Row]:
    """No rows: the footers of the first files are read, so that a damaged one is found."""
    parquet_columns(path, files=100)
    yield from ()


def _iter_hf(path: Path, split: str) -> Iterator[Row]:
    try:
        import datasets
    except ImportError:
        raise MissingDependency("datasets", "hub", "Loading a Hugging Face dataset") from None
    try:
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            loaded = datasets.load_dataset(str(path), split=split)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise InputError(f"{path} has no split '{split}' (it has: {', '.join(loaded)}); set split:")
            loaded = loaded[split]
        yield from loaded
    except SynthError:
        raise
    except Exception as exc:  # datasets and pyarrow raise many kinds; each is a fault of the folder
        raise InputError(f"{path}: cannot read it as a Hugging Face dataset ({type(exc).__name__}: {exc})") from None


def read_rows(path: Path, fmt: str, split: str = "train", peek: bool = False) -> Iterator[Row]:
    """The rows of an input whose path passed the checks; with `peek`, those in its first MB."""
    if fmt == "jsonl":
        return iter_jsonl(path, peek)
    if fmt == "json":
        return _iter_json(path, peek)
    if fmt == "csv":
        return _iter_csv(path, peek)
    if fmt == "parquet":
        return _peek_parquet(path) if peek else _iter_parquet(path)
    return iter(()) if peek else _iter_hf(path, split)


COUNT_BYTES = 256 * 2**20  # count the lines of inputs up to this size for the progress total


def read_checked(path: Path, base_dir: Path, fmt: str = "auto", split: str = "train", who: str = "") -> Iterator[Row]:
    """Rows of a file a pipeline names, read only where inputs.read_problem allows and only from a
    regular file (or a folder of them): one InputError naming the file and the fix otherwise."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    problem = read_problem(path, base_dir) or file_problem(path, fmt, base_dir)
    if problem:
        raise InputError(f"{who}: {problem}" if who else problem)
    yield from read_rows(path, fmt, split)


def count_rows(path: Path, fmt: str) -> int | None:
    """Rows in an input, where that is cheap: Parquet's metadata, or the lines of a text file up
    to COUNT_BYTES (a CSV's header and quoted line breaks make that an estimate). None otherwise."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            files = [path] if path.is_file() else sorted(path.glob("**/*.parquet"))
            return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        if fmt in ("jsonl", "csv") and path.is_file() and path.suffix != ".gz" and path.stat().st_size <= COUNT_BYTES:
            with open(path, "rb") as fh:
                lines = sum(1 for line in fh if line.strip())
            return max(lines - 1, 0) if fmt == "csv" else lines
    except (OSError, ValueError):
        return None
    return None
