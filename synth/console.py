"""Terminal output: live progress with rows/s and tokens/s, and the end-of-run summary table."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table
from rich.text import Text

from .pipeline import Progress, RunResult
from .store import events_text

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
    def __init__(self):
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
        for spec in stages:
            self.tasks[spec.label] = self.bar.add_task(f"{spec.index:02d} {spec.label}", total=total, tokens=0)
        self.bar.start()

    def advance(self, label: str, rows: int, tokens: int = 0, in_flight: int | None = None) -> None:
        task = self.tasks[label]
        fields = self.bar.tasks[task].fields
        update = {"tokens": fields.get("tokens", 0) + tokens}
        if in_flight is not None:
            update["in_flight"] = in_flight
        self.bar.update(task, advance=rows, **update)

    def note(self, message: str) -> None:
        console.print(f"[yellow]note:[/] {message}")

    def stop(self) -> None:
        self.bar.stop()


def stage_table(stages: list[dict], title: str | None = None) -> Table:
    """Rows, drops, events, traffic and time per stage. Columns with nothing to say in this run
    (no request sent, nothing filtered) are left out, so the table fits an 80-column terminal."""
    reasons = lambda d: ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items())) or "-"  # noqa: E731
    cells: dict[str, list[str]] = {
        "stage": [s["label"] for s in stages],
        "in": [f"{s['rows_in']:,}" for s in stages],
        "out": [f"{s['rows_out']:,}" for s in stages],
        "filtered": [reasons(s.get("filtered", {})) for s in stages],
        "failed": [reasons(s.get("failed", {})) for s in stages],
        "events": [events_text(s) for s in stages],
        "requests": [f"{s.get('counters', {}).get('requests', 0):,}" for s in stages],
        "cached": [f"{s.get('counters', {}).get('cache_hits', 0):,}" for s in stages],
        "tok out": [f"{s.get('counters', {}).get('completion_tokens', 0):,}" for s in stages],
        "wall s": [f"{s.get('wall_seconds', s.get('seconds', 0)):,.1f}" for s in stages],
        "busy s": [f"{s.get('busy_seconds', s.get('seconds', 0)):,.1f}" for s in stages],
    }
    optional = ("filtered", "failed", "events", "requests", "cached", "tok out")
    shown = [c for c in cells if c not in optional or any(v not in ("-", "0") for v in cells[c])]
    table = Table(title=title, title_justify="left")
    for column in shown:
        left = column in ("stage", "filtered", "failed", "events")
        table.add_column(column, justify="left" if left else "right", no_wrap=column == "stage", overflow="fold")
    for i in range(len(stages)):
        table.add_row(*(escape(cells[c][i]) for c in shown))  # a reason such as "x in [a, b]" is not markup
    table.caption = "wall s: from the stage's first batch to its last; busy s: summed over batches run at once"
    return table


def print_summary(result: RunResult) -> None:
    console.print(stage_table(result.manifest["stages"], title="Run summary"))
    session = result.manifest["sessions"][-1]
    console.print(
        f"[green]done:[/] {result.output_rows:,} rows in {result.root / 'output'} "
        f"({session['seconds']:,.1f} s this session)"
    )
