"""What the demo prints and draws at the end: phases, events per layer, dead letters, fraud, money, gas."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infra.demo import DemoResult


def layer_counts(result: DemoResult) -> list[tuple[str, int]]:
    """Events at each step, from the simulator to the serving view."""
    return [
        ("simulated", result.simulated),
        ("accepted by producers", sum(result.produced.values())),
        ("records on Kafka", result.kafka_records),
        ("speed: accepted", result.speed_accepted),
        ("speed: dead letters", len(result.dead_letters)),
        ("master dataset", result.master_rows),
        ("batch vehicle_history", result.batch_rows.get("vehicle_history", 0)),
        ("serving view", result.serving_rows),
    ]


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    return table


def replays_stopped(result: DemoResult) -> int:
    """The fleet's replayed events refused as ``duplicate_event`` dead letters (the demo's own replays aside)."""
    caught = sum(1 for reason, _ in result.dead_letters if reason == "duplicate_event")
    injected = sum(1 for reason, _ in result.injected if reason == "duplicate_event")
    return max(0, caught - injected)


def print_summary(result: DemoResult, console: Console) -> None:
    phases = _table("phases", "phase", "seconds")
    for name, seconds in result.phases:
        phases.add_row(name, f"{seconds:.1f}")
    phases.add_row("[bold]total", f"[bold]{sum(s for _, s in result.phases):.1f}")
    console.print(phases)
    if result.stages:
        stages = _table("stream: events/s per stage", "stage", "events", "seconds", "events/s")
        for stage, (events, seconds) in result.stages.items():
            rate = events / seconds if seconds > 0 else 0.0
            stages.add_row(stage, f"{events:,}", f"{seconds:.1f}", f"{rate:,.0f}")
        console.print(stages)

    layers = _table("events per layer", "layer", "events")
    for name, n in layer_counts(result):
        layers.add_row(name, f"{n:,}")
    layers.add_row("verified share (master)", f"{result.verified_share:.1%}")
    console.print(layers)

    dead = _table("dead letters by reason", "reason", "events", "of which injected by the demo")
    injected = Counter(reason for reason, _ in result.injected)
    for reason, n in sorted(Counter(r for r, _ in result.dead_letters).items()):
        dead.add_row(reason, str(n), str(injected.get(reason, 0)))
    console.print(dead)

    if result.evaluation is not None:
        ev = result.evaluation
        fraud = _table(
            "frauds: detected vs injected (vehicles), beside the naive 'odometer ever goes down' check",
            "kind",
            "injected",
            "detected",
            "false alarms",
            "precision",
            "recall",
            "recall (detectable)",
            "naive recall",
            "stopped at the speed layer",
        )
        stopped = replays_stopped(result)
        for k in ev.kinds:
            detectable = f"{k.detectable_recall:.0%} of {k.detectable}" if k.detectable else "-"
            fraud.add_row(
                k.kind,
                str(k.support),
                str(k.tp),
                str(k.fp),
                f"{k.precision:.0%}",
                f"{k.recall:.0%}",
                detectable,
                f"{k.naive_recall:.0%}",
                f"{stopped:,} events (duplicate_event)" if k.kind == "replay" else "",
            )
        console.print(fraud)
        if stopped:
            console.print(
                f"replays are caught where they enter: {stopped:,} replayed events of the fleet were refused "
                "by the speed layer as duplicate_event dead letters, before any view; the batch scores "
                "never see them, hence its recall for that kind"
            )
        console.print(
            f"clean vehicles labelled suspicious or fraudulent: {ev.clean_false_positives} of "
            f"{ev.clean_vehicles} ({ev.false_positive_rate:.1%}); the naive check flags "
            f"{ev.naive_false_positive_rate:.1%}"
        )

    queries = _table("paid queries", "query", "rows", "cents", "fee", "producers paid")
    for q in result.queries:
        paid = sum(1 for k, v in q.deltas.items() if k not in ("consumer", "treasury") and v > 0)
        queries.add_row(
            q.name,
            f"{q.rows:,}",
            f"{q.receipt['amount_cents']:,}",
            f"{q.deltas.get('treasury', 0):,}",
            str(paid),
        )
    console.print(queries)

    money = _table("PCC_token paid (Marketplace credits, cents)", "producer", "cents")
    for source, cents in sorted(result.paid.items(), key=lambda kv: -kv[1]):
        money.add_row(source, f"{cents:,}")
    money.add_row("treasury (PCC_gold holders)", f"{result.treasury:,}")
    console.print(money)

    gas = _table("gas spent", "what", "gas")
    for what, amount in result.gas.items():
        gas.add_row(what, f"{amount:,}")
    console.print(gas)


def draw_chart(result: DemoResult, path: Path) -> Path:
    """One PNG: events per layer, frauds detected vs injected per kind, PCC_token paid per producer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 6), layout="constrained")
    names, counts = zip(*layer_counts(result), strict=True)
    ax1.barh(names[::-1], counts[::-1], color="#3b6ea5")
    ax1.set_title("events per layer")
    ax1.set_xlabel("events")
    for y, n in enumerate(counts[::-1]):
        ax1.annotate(f"{n:,}", (n, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    if result.evaluation is not None:
        kinds = result.evaluation.kinds
        x = range(len(kinds))
        ax2.bar([i - 0.2 for i in x], [k.support for k in kinds], 0.4, label="injected", color="#999999")
        ax2.bar([i + 0.2 for i in x], [k.tp for k in kinds], 0.4, label="detected", color="#c0392b")
        ax2.set_xticks(list(x), [k.kind.replace("_", "\n") for k in kinds], fontsize=8)
        ax2.legend()
    ax2.set_title("frauds per kind (vehicles)")
    paid = sorted(result.paid.items(), key=lambda kv: kv[1])
    ax3.barh(
        [s for s, _ in paid] + ["treasury"],
        [c / 100 for _, c in paid] + [result.treasury / 100],
        color="#27ae60",
    )
    ax3.set_title("PCC_token paid (euro)")
    fig.suptitle(f"PCC demo: {result.simulated:,} simulated events, batch version {result.batch_version}")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
