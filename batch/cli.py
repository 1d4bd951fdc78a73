"""``pcc batch``: run, inspect and schedule the batch layer; evaluate its fraud scores."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines.errors import PccValueError

if TYPE_CHECKING:  # the batch settings (pydantic) and Spark are loaded when a command runs
    from batch.config import BatchConfig
    from batch.runs import RunRecord

app = typer.Typer(
    name="batch",
    help="The batch layer: rebuild the batch views from the master dataset.",
    no_args_is_help=True,
)
console = Console(stderr=True)
out = Console()


def _config(ctx: typer.Context, master: str | None = None) -> BatchConfig:
    from batch.config import BatchConfig
    from pipelines.cli.main import settings_from

    return BatchConfig.from_settings(settings_from(ctx), spark_master=master)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PccValueError(
            f"--since {value!r} is not an ISO date or time (e.g. 2026-03-01T00:00:00Z)"
        ) from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _run(config: BatchConfig, full: bool, since: datetime | None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from batch.jobs import STAGES, run_batch

    with Progress(
        TextColumn("[bold]batch[/bold] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("starting", total=len(STAGES))
        record = run_batch(
            config,
            full=full,
            since=since,
            progress=lambda stage, i, n: progress.update(task, description=stage, completed=i),
        )
        progress.update(task, description=record.status, completed=len(STAGES))
    for q in record.quarantined:
        console.print(f"[yellow]quarantined[/yellow] {q['file']}: {q['reason']}")
    for r in record.set_aside:
        console.print(
            f"[yellow]set aside[/yellow] {r['rows']} row(s) of {r['vehicle']}: event id {r['event_id']}"
            f" is {r['kept_by']}'s"
        )
    if record.status == "up_to_date":
        out.print(f"version {record.version} is up to date with the master dataset (use --full to rebuild)")
    else:
        out.print(
            f"published version {record.version}: {record.rows_in} events in, "
            f"{json.dumps(record.rows_out)} rows out, {record.duration_s}s"
        )


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    full: Annotated[
        bool, typer.Option("--full", help="Rebuild even if the master dataset is unchanged.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Re-run the rules only for vehicles with events processed since."),
    ] = None,
    master: Annotated[
        str | None, typer.Option("--master", help="Spark master URL (default batch.master).")
    ] = None,
) -> None:
    """Rebuild, audit and publish the batch views (idempotent); alert the new verdicts."""
    from batch.alerts import after_run
    from batch.publish import read_current
    from pipelines.cli.main import settings_from

    config = _config(ctx, master)
    previous = read_current(config)
    _run(config, full, _since(since))
    done = after_run(settings_from(ctx), config, previous, lambda m: console.print(f"[yellow]{m}[/yellow]"))
    if done is not None and done.sent:
        out.print(f"{done.sent} alerts for verdicts new since {done.baseline or 'nothing'}")


@app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """The published version, its watermark, and the last run."""
    from batch.publish import read_current
    from batch.runs import read_runs

    config = _config(ctx)
    current = read_current(config)
    if current is None:
        out.print(f"no batch version published under {config.batch_dir}")
    else:
        wm = current.watermark
        out.print(f"published: {current.version} at {current.published_at}")
        out.print(
            f"watermark: processed_time {wm.processed_time}, event_time {wm.event_time}, {wm.events} events"
        )
        for view, rows in current.rows.items():
            out.print(f"  {view}: {rows} rows")
    last = read_runs(config, limit=1)
    if last:
        r = last[0]
        out.print(f"last run: {r['version']} {r['status']} ({r['duration_s']}s) {r.get('error') or ''}")


@app.command("history")
def history_cmd(ctx: typer.Context, limit: Annotated[int, typer.Option(help="How many runs.")] = 20) -> None:
    """Each run: start, end, duration, rows in/out, audit result, version."""
    from batch.runs import read_runs

    table = Table("version", "status", "started", "ended", "duration s", "rows in", "rows out", "audit")
    for r in read_runs(_config(ctx), limit=limit):
        audit = r.get("audit") or {}
        verdict = (
            "-"
            if not audit
            else ("pass" if audit.get("success") else f"FAIL ({len(audit.get('failures', []))})")
        )
        table.add_row(
            r["version"], r["status"], r["started"], r.get("ended") or "", str(r.get("duration_s")),
            str(r.get("rows_in")), str(sum((r.get("rows_out") or {}).values())), verdict,
        )  # fmt: skip
    out.print(table)


@app.command("schedule")
def schedule_cmd(
    ctx: typer.Context,
    cron: Annotated[str, typer.Option("--cron", help='Cron expression, e.g. "0 * * * *".')],
    master: Annotated[str | None, typer.Option("--master", help="Spark master URL.")] = None,
    max_runs: Annotated[int | None, typer.Option(help="Stop after this many runs.")] = None,
) -> None:
    """Run the batch job at every tick of a cron expression (long-running)."""
    from batch.alerts import after_run
    from batch.jobs import run_batch
    from batch.publish import read_current
    from batch.scheduler import next_times, run_schedule
    from pipelines.cli.main import settings_from

    config = _config(ctx, master)
    settings = settings_from(ctx)
    next_times(cron, datetime.now(UTC))  # validate before waiting

    def run_and_alert() -> RunRecord:
        previous = read_current(config)
        record = run_batch(config)
        after_run(settings, config, previous, console.print)
        return record

    run_schedule(config, cron, run_and_alert, on_event=lambda m: console.print(m), max_runs=max_runs)


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    simulation: Annotated[Path, typer.Argument(help="A `pcc simulate --out` directory (labels.jsonl).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON.")] = None,
    variants: Annotated[
        bool, typer.Option("--variants/--kinds-only", help="A row per variant of each kind.")
    ] = True,
    loaded: Annotated[
        bool,
        typer.Option(
            "--loaded",
            help="The master dataset came from `pcc batch load-simulation` (stand-in pseudonyms), "
            "not through the producers and the identity vault.",
        ),
    ] = False,
) -> None:
    """Precision, recall and F1 per fraud kind and per variant of the published fraud_scores, beside the naive check."""
    from batch.evaluate import evaluate_published

    if loaded:
        result = evaluate_published(_config(ctx), simulation, speed=False)  # no speed layer ran
    else:
        from pipelines.cli.main import settings_from
        from pipelines.vault import IdentityVault

        with IdentityVault(settings_from(ctx)) as vault:
            result = evaluate_published(_config(ctx), simulation, vault.find_vehicle)
    columns = ("kind / variant", "cases", "P", "R", "F1", "detectable", "P", "R", "F1", "naive R", "speed ≤3")
    table = Table(
        *columns, title="fraud detection per kind and variant (naive: 'the odometer ever goes down')"
    )
    for r in result.rows:
        a, d = r["all"], r["detectable"]
        if r["variant"] != "all" and not variants:
            continue
        name = r["kind"] if r["variant"] == "all" else f"  {r['variant']}"
        rt = "" if r["realtime"] is None else f"{r['realtime']:.3f}"
        table.add_row(
            name, str(a["cases"]), f"{a['precision']:.3f}", f"{a['recall']:.3f}", f"{a['f1']:.3f}",
            str(d["cases"]), f"{d['precision']:.3f}", f"{d['recall']:.3f}", f"{d['f1']:.3f}",
            f"{r['naive_recall']:.3f}", rt, style="bold" if r["variant"] == "all" else None,
        )  # fmt: skip
    out.print(table)
    out.print(
        f"clean vehicles: {result.clean_vehicles}, not labelled clean: {result.clean_false_positives} "
        f"({result.false_positive_rate:.2%}); the naive check flags {result.naive_false_positive_rate:.2%}"
    )
    if json_out:
        json_out.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")


@app.command("load-simulation")
def load_simulation_cmd(
    ctx: typer.Context,
    simulation: Annotated[Path, typer.Argument(help="A `pcc simulate --out` directory.")],
) -> None:
    """Write simulator output as a master dataset (stands in for the speed layer)."""
    from batch.simulation import master_from_simulation

    config = _config(ctx)
    counts = master_from_simulation(simulation, config.master_dataset)
    out.print(
        f"wrote {counts['events']} events ({counts['replays']} replays flagged) to {config.master_dataset}"
    )


@app.command("migrate-master")
def migrate_master_cmd(
    ctx: typer.Context,
    buckets: Annotated[
        int | None, typer.Option("--buckets", help="Vehicle buckets (default batch.master_buckets).")
    ] = None,
) -> None:
    """Rewrite a date-partitioned master dataset into vehicle buckets, once (re-running finishes it)."""
    from batch.layout import migrate_master

    config = _config(ctx)
    report = migrate_master(config.master_dataset, buckets or config.master_buckets)
    for q in report.quarantined:
        console.print(f"[yellow]quarantined[/yellow] {q['file']}: {q['reason']} (moved under _quarantine/)")
    out.print(
        f"master dataset {config.master_dataset}: {report.rows} rows from {report.files_in} files "
        f"into {report.buckets} vehicle buckets ({report.files_out} files), {report.seconds}s"
    )


@app.command("compact-master")
def compact_master_cmd(
    ctx: typer.Context,
    max_files: Annotated[
        int | None,
        typer.Option(
            "--max-files", help="Compact buckets with more files than this (default batch.compact_files)."
        ),
    ] = None,
) -> None:
    """Merge each vehicle bucket's small files into one sorted file (a run also does it)."""
    from batch.layout import compact_master

    config = _config(ctx)
    limit = config.compact_files if max_files is None else max_files
    report = compact_master(config.master_dataset, limit)
    out.print(
        f"compacted {report.files_in} files ({report.rows} rows) into {report.files_out}, {report.seconds}s"
    )
