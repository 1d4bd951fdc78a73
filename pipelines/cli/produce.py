"""``pcc produce``: stream a producer's JSON Lines into Kafka with anchored proofs."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipelines.cli.main import settings_from
from pipelines.cli.progress import LineProgress
from pipelines.errors import PccConfigError, PccValueError
from pipelines.topics import SOURCE_KINDS

if TYPE_CHECKING:  # the producer, the settings model and rich are loaded when the command runs
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from pipelines.producer import ProducerReport
    from pipelines.settings import Settings


@functools.cache
def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def read_lines(path: str, max_bytes: int) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    """Numbered records of a JSON Lines file (``-`` for stdin); a bad line yields its error."""
    from pipelines.events import parse_event

    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield number, parse_event(line.rstrip(b"\r\n"), max_bytes=max_bytes)
            except PccValueError as exc:
                yield number, exc
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def count_lines(path: str) -> int | None:
    if path == "-":
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def produce_file(
    settings: Settings,
    path: str,
    *,
    source_id: str,
    kind: str,
    strict: bool = False,
    anchor: Any = None,
    publisher: Any = None,
    vault: Any = None,
    progress: Progress | None = None,
) -> ProducerReport:
    """Produce one JSON Lines file as ``source_id``; returns the report."""
    from pipelines.producer import Producer, load_anchor

    if kind not in SOURCE_KINDS:
        raise PccValueError(f"--kind: {kind!r} is not a source kind ({', '.join(SOURCE_KINDS)})")
    if anchor is None:
        anchor = load_anchor(settings)
    if publisher is None:
        from pipelines.producer.kafka import publisher_for

        publisher = publisher_for(settings)
    if vault is None:
        from pipelines.vault import IdentityVault

        vault = IdentityVault(settings)
    task = progress.add_task(source_id, total=count_lines(path)) if progress else None

    def advance(published: int, checkpoints: int) -> None:
        if progress is not None and task is not None:
            progress.update(task, completed=published, description=f"{source_id} ({checkpoints} checkpoints)")

    producer = Producer(
        settings, source_id=source_id, source_kind=kind, anchor=anchor, publisher=publisher, vault=vault,
        on_progress=advance,
    )  # fmt: skip
    with producer:
        producer.submit_many(read_lines(path, settings.producer.max_payload_bytes), strict=strict)
    if progress is not None and task is not None:
        progress.update(task, completed=producer.report.published + sum(producer.report.rejected.values()))
    return producer.report


def _report_dict(r: ProducerReport) -> dict[str, Any]:
    return {
        "published": r.published, "rejected": dict(r.rejected), "checkpoints": r.checkpoints,
        "gas_used": r.gas_used, "unsent": r.unsent, "elapsed_s": round(r.elapsed_s, 3),
        "rejections": [{"line": where, "message": message} for where, message in r.rejections[:100]],
    }  # fmt: skip


def _register_fleet(settings: Settings, fleet_json: Path, quiet: bool) -> None:
    """Register the fleet's sources missing from the ledger, with their kind and tier.

    Through the registrar the ledger layer installs (entry point group ``pcc.registrars``):
    the shared package imports no layer.
    """
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="pcc.registrars") if ep.name == "ledger"]
    if not found:
        raise PccConfigError(
            "no source registrar is installed (entry point group pcc.registrars); install pcc[ledger]"
        )
    results = found[0].load()(settings, fleet_json)
    refused = [r for r in results if r.status == "refused"]
    if refused:
        raise PccValueError(
            f"{len(refused)} source(s) of {fleet_json} refused: "
            + "; ".join(f"{r.row.source_id}: {r.reason}" for r in refused[:5])
        )
    if not quiet:
        new = [r for r in results if r.status == "registered"]
        _console().print(
            f"registered {len(new)} source(s) ({', '.join(f'{r.row.source_id} tier {r.row.tier}' for r in new[:5])}"
            f"{', ...' if len(new) > 5 else ''}); {len(results) - len(new)} already registered"
        )


def summary_table(reports: dict[str, ProducerReport]) -> Table:
    from rich.table import Table

    table = Table(title="pcc produce")
    for col in ("source", "sent", "rejected", "checkpoints", "gas", "events/s"):
        table.add_column(col, justify="right" if col != "source" else "left")
    for source, r in reports.items():
        rate = r.published / r.elapsed_s if r.elapsed_s else 0.0
        table.add_row(
            source, f"{r.published:,}", f"{sum(r.rejected.values()):,}", str(r.checkpoints), f"{r.gas_used:,}",
            f"{rate:,.0f}",
        )  # fmt: skip
    return table


def _jobs(
    files: list[str], source: str | None, kind: str | None, fleet: Path | None
) -> list[tuple[str, str, str]]:
    """(path, source, kind) of every file to produce: a fleet's sources, then the files given."""
    jobs: list[tuple[str, str, str]] = []
    if fleet is not None:
        try:
            meta = json.loads((fleet / "fleet.json").read_text())
        except FileNotFoundError:
            raise PccValueError(
                f"--fleet: {fleet / 'fleet.json'} does not exist (run pcc simulate)"
            ) from None
        for src in meta["sources"]:
            fleet_file = fleet / "events" / f"{src['id']}.jsonl"
            if fleet_file.exists():
                jobs.append((str(fleet_file), src["id"], src["kind"]))
    if files and (not source or not kind):
        raise PccValueError("--source and --kind are required when files are given")
    jobs += [(path, source, kind) for path in files if source and kind]
    if not jobs:
        raise PccValueError(
            "nothing to produce: give JSON Lines files (with --source and --kind) or --fleet DIR"
        )
    return jobs


def _progress(console: Any, jobs: list[tuple[str, str, str]], quiet: bool) -> Any:
    """A bar on a terminal, a line every 10 s into a file or a pipe (a bar nobody sees), or nothing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return contextlib.nullcontext(None)
    if console.is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        return Progress(*columns, console=console)
    counts = [count_lines(path) for path, _, _ in jobs]
    total = None if None in counts else sum(c or 0 for c in counts)
    return LineProgress("pcc produce", total=total)


def produce(
    ctx: typer.Context,
    files: Annotated[
        list[str] | None, typer.Argument(help="JSON Lines files of producer input ('-' = stdin).")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="This producer's registered source id.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help=f"Source kind: {', '.join(SOURCE_KINDS)}.")
    ] = None,
    fleet: Annotated[
        Path | None, typer.Option("--fleet", help="A simulated fleet directory: produce every source in it.")
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Send nothing if any line is invalid.")] = False,
    register: Annotated[
        bool,
        typer.Option(
            "--register",
            help="With --fleet: first register the fleet's sources not yet on the ledger, with the kind and "
            "tier fleet.json gives them (as pcc ledger register-sources).",
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress and no table; errors only.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the per-source report as JSON on stdout (no table).")
    ] = False,
) -> None:
    """Validate, pseudonymise, log, anchor and publish events to Kafka.

    On a terminal a progress bar; otherwise a progress line every 10 s (done, left, rate)."""
    from pipelines.producer import load_anchor

    console = _console()
    settings = settings_from(ctx)
    if register and fleet is None:
        raise PccValueError("--register registers the sources of a --fleet; give --fleet DIR")
    jobs = _jobs(files or [], source, kind, fleet)
    if register:
        assert fleet is not None
        _register_fleet(settings, fleet / "fleet.json", quiet)
    anchor = load_anchor(settings)
    from pipelines.vault import IdentityVault

    vault = IdentityVault(settings)
    reports: dict[str, ProducerReport] = {}
    with _progress(console, jobs, quiet) as shown:
        for job_path, src, knd in jobs:
            reports[src] = produce_file(
                settings, job_path, source_id=src, kind=knd, strict=strict, anchor=anchor, vault=vault,
                progress=shown,
            )  # fmt: skip
    if as_json:
        typer.echo(json.dumps({src: _report_dict(r) for src, r in reports.items()}, indent=2))
        return
    if quiet:
        return
    console.print(summary_table(reports))
    for src, r in reports.items():
        for where, message in r.rejections[:10]:
            console.print(f"[yellow]{src} line {where}[/]: {message}")
        if len(r.rejections) > 10:
            console.print(f"[yellow]{src}[/]: {len(r.rejections) - 10} more rejected lines")
