"""``pcc speed run``: the speed layer with a progress line, Prometheus metrics and clean SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from speed.errors import SpeedError

if TYPE_CHECKING:
    from speed.config import SpeedConfig

app = typer.Typer(help="The speed layer: verify, score and flag events as they arrive.", no_args_is_help=True)


def _roots_factory(settings: object, roots_file: Path | None) -> object:
    """The ledger-backed roots (the ledger client's readers, cached), or a JSON file of them."""
    from speed.roots import FileRootsFactory, ledger_roots_factory

    if roots_file is not None:
        if not roots_file.exists():
            raise SpeedError(f"--roots-file {roots_file} does not exist")
        return FileRootsFactory(roots_file)
    return ledger_roots_factory(settings)


@app.command("run")
def run(
    ctx: typer.Context,
    until_idle: Annotated[
        float | None, typer.Option("--until-idle", help="Stop after SECONDS without a record.")
    ] = None,
    max_events: Annotated[int | None, typer.Option("--max-events", help="Stop after N records.")] = None,
    runner: Annotated[
        str | None,
        typer.Option("--runner", help="Beam runner (default FnApiRunner; FlinkRunner, DataflowRunner...)"),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Prometheus port on 127.0.0.1 (0: off).")
    ] = None,
    state: Annotated[
        Literal["worker", "keyed"] | None,
        typer.Option(
            "--state",
            help="Where per-vehicle state lives: each worker's (default) or Beam keyed state, keyed by vehicle.",
        ),
    ] = None,
    roots_file: Annotated[
        Path | None,
        typer.Option(
            "--roots-file", help="Sources and checkpoints from a JSON file instead of the ledger (offline)."
        ),
    ] = None,
    beam_option: Annotated[
        list[str] | None,
        typer.Option("--beam-option", help="A Beam pipeline option, e.g. --beam-option=--parallelism=4"),
    ] = None,
) -> None:
    """Run the speed layer until a stop condition, SIGTERM or Ctrl-C."""
    from rich.console import Console

    from pipelines.cli.main import settings_from
    from speed.config import SpeedConfig
    from speed.metrics import METRICS, serve
    from speed.pipeline import SpeedRun

    settings = settings_from(ctx)
    config = SpeedConfig.from_settings(
        settings,
        until_idle_s=until_idle,
        max_events=max_events,
        runner=runner,
        metrics_port=metrics_port,
        state=state,
        pipeline_args=tuple(beam_option or ()),
    )
    speed_run = SpeedRun(config, _roots_factory(settings, roots_file))  # type: ignore[arg-type]
    console = Console(stderr=True)
    if config.metrics_port:
        serve(config.metrics_port)
        console.print(f"metrics on http://127.0.0.1:{config.metrics_port}/metrics")
    previous = signal.signal(signal.SIGTERM, lambda *_: speed_run.stop())
    done = threading.Event()

    def progress() -> None:
        ends = _LogEnds(config)
        try:
            while not done.wait(2.0):
                s = METRICS.snapshot(ends.read())
                console.print(
                    f"{s.rate:8.0f} ev/s  events {s.events}  accepted {s.accepted}  "
                    f"verified {s.verified_ratio:.1%}  dead letters {s.dead_letters}  waiting {s.pending}  "
                    f"lag {sum(s.lag.values())}"
                )
        finally:
            ends.close()

    reporter = threading.Thread(target=progress, daemon=True)
    reporter.start()
    try:
        speed_run.run()
    except KeyboardInterrupt:
        speed_run.stop()
    finally:
        done.set()
        reporter.join(timeout=10)
        signal.signal(signal.SIGTERM, previous)
    s = METRICS.snapshot()
    console.print(
        f"stopped: {s.events} events, {s.rows_flushed} rows in the real-time view, "
        f"{s.dead_letters} dead letters, {s.pending} still waiting"
    )


class _LogEnds:
    """The end offset of every partition read (for the lag figure); empty when the broker is down."""

    def __init__(self, config: SpeedConfig) -> None:
        self._config = config
        self._consumer: Any = None

    def read(self) -> dict[str, int]:
        from kafka import KafkaConsumer, TopicPartition

        try:
            if self._consumer is None:
                # no group: it only reads end offsets (with auto-commit on, the client warns it turns it off)
                self._consumer = KafkaConsumer(
                    bootstrap_servers=self._config.bootstrap, enable_auto_commit=False
                )
            consumer = self._consumer
            tps = [
                TopicPartition(t, p)
                for t in self._config.topics
                for p in (consumer.partitions_for_topic(t) or ())
            ]
            ends = consumer.end_offsets(tps)
        except Exception:
            return {}
        return {f"{tp.topic}[{tp.partition}]": end for tp, end in ends.items()}

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()
