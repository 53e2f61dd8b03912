"""Terminal output: live progress with rows/s and tokens/s, and the end-of-run summary table."""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table
from rich.text import Text

from .progress import Progress, RunResult
from .spend import spend_lines
from .store import RunStore, events_text, stage_events

console = Console(stderr=True)


class _Rate(ProgressColumn):
    """rows/s, and for LLM stages tokens/s and the requests their backend has in flight."""

    def render(self, task: Task) -> Text:
        speed = task.speed or 0.0
        tokens = task.fields.get("tokens", 0)
        elapsed = task.elapsed or 0.0
        tok = f"  {tokens / elapsed:,.0f} tok/s" if tokens and elapsed else ""
        flight = task.fields.get("in_flight")
        busy = f"  {flight:,} in flight" if flight and not task.finished else ""
        if task.fields.get("waiting") and not task.finished:
            busy = "  waiting for server"
        return Text(f"{speed:,.1f} rows/s{tok}{busy}", style="cyan")


class _Count(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = f" / {task.total:,.0f}" if task.total is not None else ""
        return Text(f"{task.completed:>9,.0f}{total} rows")


class _Eta(ProgressColumn):
    """Time left at the current pace, once the total is known and there is a pace to go by."""

    def render(self, task: Task) -> Text:
        if task.total is None or task.finished or not task.speed:
            return Text("")
        left = max(task.total - task.completed, 0) / task.speed
        minutes, seconds = divmod(int(left), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"ETA {hours:d}:{minutes:02d}:{seconds:02d}", style="green")


class ConsoleProgress(Progress):
    """Progress bars and notes on the terminal; with bars=False (`-q`) only the notes, and the
    line that says a server stopped answering."""

    def __init__(self, bars: bool = True):
        self.bars = bars
        self.bar = RichBar(
            SpinnerColumn(),
            TextColumn("{task.description:<22}"),
            BarColumn(bar_width=20),
            _Count(),
            _Rate(),
            TimeElapsedColumn(),
            _Eta(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, int] = {}

    def start(self, stages, total: int | None = None) -> None:
        if not self.bars:
            return
        for spec in stages:
            self.tasks[spec.label] = self.bar.add_task(f"{spec.index:02d} {spec.label}", total=total, tokens=0)
        self.bar.start()

    def advance(self, label: str, rows: int, tokens: int = 0, in_flight: int | None = None) -> None:
        if label not in self.tasks:
            return
        task = self.tasks[label]
        fields = self.bar.tasks[task].fields
        update = {"tokens": fields.get("tokens", 0) + tokens}
        if in_flight is not None:
            update["in_flight"] = in_flight
        self.bar.update(task, advance=rows, **update)

    def note(self, message: str) -> None:
        console.print(f"[yellow]note:[/] {escape(message)}")

    def trouble(self, message: str | None) -> None:
        if message is not None:
            console.print(f"[yellow]waiting for server:[/] {escape(message)}")
        else:
            console.print("[green]note:[/] the server answers again")
        for task in self.tasks.values():
            self.bar.update(task, waiting=message is not None)

    def stop(self) -> None:
        if self.bars:
            self.bar.stop()


def _n(value: float) -> str:
    """A count in at most 6 characters: 95,000 / 950k / 51.2M."""
    if value < 100_000:
        return f"{value:,.0f}"
    if value < 1_000_000:
        return f"{value / 1000:,.0f}k"
    return f"{value / 1_000_000:,.1f}M"


def _t(seconds: float) -> str:
    """Seconds as 12.3, 4:05 or 3:25:45."""
    if seconds < 100:
        return f"{seconds:.1f}"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def stage_table(stages: list[dict], title: str | None = None) -> Group:
    """Rows, traffic and time per stage as a table of numbers that fits an 80-column terminal,
    then, under it, a line per stage that dropped rows or counted events, with the reasons (a
    reason such as "x in [a, b]" is text, never markup). Traffic columns no stage used are left out."""
    counter = lambda s, k: s.get("counters", {}).get(k, 0)  # noqa: E731
    cells: dict[str, list[str]] = {
        "stage": [s["label"] for s in stages],
        "in": [_n(s["rows_in"]) for s in stages],
        "out": [_n(s["rows_out"]) for s in stages],
        "drop": [_n(sum(s.get("filtered", {}).values()) + sum(s.get("failed", {}).values())) for s in stages],
        "req": [_n(counter(s, "requests")) for s in stages],
        "cached": [_n(counter(s, "cache_hits")) for s in stages],
        "tokens": [_n(counter(s, "completion_tokens")) for s in stages],
        "wall": [_t(s.get("wall_seconds", s.get("seconds", 0))) for s in stages],
        "busy": [_t(s.get("busy_seconds", s.get("seconds", 0))) for s in stages],
    }
    optional = ("req", "cached", "tokens")
    shown = [c for c in cells if c not in optional or any(v != "0" for v in cells[c])]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for column in shown:
        if column == "stage":
            table.add_column(column, overflow="fold", min_width=min(max(map(len, cells["stage"])), 12), max_width=24)
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for i in range(len(stages)):
        table.add_row(*(escape(cells[c][i]) for c in shown))
    legend = Text(
        "drop: rows filtered or failed; req: requests sent; tokens: generated; wall: a stage's first batch "
        "to its last; busy: summed over its batches, which run at once",
        style="dim",
    )
    notes = []
    for s in stages:
        parts = [
            f"{kind} {', '.join(f'{k}: {v:,}' for k, v in sorted(values.items()))}"
            for kind, values in (("filtered", s.get("filtered", {})), ("failed", s.get("failed", {})))
            if values
        ]
        if stage_events(s):
            parts.append(f"events {events_text(s)}")
        if parts:
            notes.append(Text(f"  {s['label']}: " + "; ".join(parts)))
    return Group(table, legend, *notes)


def print_summary(result: RunResult) -> None:
    console.print(stage_table(result.manifest["stages"], title="Run summary"))
    for line in spend_lines(result.manifest):
        console.print(escape(line))
    session = result.manifest["sessions"][-1]
    if session.get("removed_stages"):
        removed = ", ".join(session["removed_stages"])
        console.print(f"removed the folders of stages this pipeline no longer has: {escape(removed)}")
    limited = sum((s.get("counters") or {}).get("rate_limited", 0) for s in result.manifest["stages"])
    if limited:  # the buckets kept the limits set, and the provider still refused: they are set too high
        console.print(
            f"[yellow]note:[/] {limited:,} request(s) got HTTP 429 although synth kept the backend's limits: "
            "requests_per_minute / tokens_per_minute are set above the provider's limits; lower them"
        )
    failed = sum(sum((s.get("failed") or {}).values()) for s in result.manifest["stages"])
    kept = ""
    if failed:  # a plain re-run of a complete run keeps them: say how to retry them
        again = RunStore(result.root).resume_hint(result.manifest)
        kept = f"; {failed:,} row(s) failed and are left out: retry them with '{escape(again)} --retry-failed'"
    if result.manifest.get("status") == "budget":
        return  # no output yet: the CLI says where the budget stopped and how to go on
    console.print(
        f"[green]done:[/] {result.output_rows:,} rows in {result.root / 'output'} "
        f"({session['seconds']:,.1f} s this session){kept}"
    )
