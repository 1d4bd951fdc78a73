"""The demo's serving side: the API over the merged views, paid queries, a paid passport report and
an owner's share link, settlement, balances."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from pipelines.errors import PccStateError
from pipelines.settings import Settings


class ServingApi:
    """The serving API (with the passport pages) on ``settings.serving.port``, in a thread of this process."""

    def __init__(self, settings: Settings, client: Any) -> None:
        import uvicorn

        from pipelines.vault import IdentityVault
        from serving.api import create_app
        from serving.config import ServingConfig
        from serving.market.chain import ChainBilling
        from serving.passport import LeafFilePaths, mount_passport

        config = ServingConfig.from_settings(settings).model_copy(update={"settle_every_s": 3600.0})
        logs = settings.data_dir / "producers"
        paths = LeafFilePaths({d.name: d for d in logs.iterdir() if d.is_dir()}) if logs.is_dir() else None
        self.config = config
        self.vault = IdentityVault(settings)
        self.app = create_app(config, ChainBilling(client), audit_paths=paths, background=False)
        mount_passport(self.app, roots=client.anchors, paths=paths, current_owner=self.vault.current_owner)
        self.url = f"http://{config.host}:{config.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host=config.host, port=config.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, name="pcc-demo-api", daemon=True)

    def __enter__(self) -> ServingApi:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise PccStateError(f"the serving API did not start at {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self.app.state.receipts.close()  # frees the data dir for a `pcc serve` (--keep-running)
        self.app.state.store.close()
        self.vault.close()

    @property
    def store(self) -> Any:
        return self.app.state.store

    def settle_pending(self) -> list[str]:
        hashes: list[str] = self.app.state.settler.settle_pending()
        return hashes


def view_counts(api: ServingApi) -> tuple[int, int, str | None]:
    """Rows and distinct event ids of the serving layer's merged ``vehicle_history`` (operator side)."""
    with api.store.pin() as (cur, _version):
        rows, events = cur.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM vehicle_history"
        ).fetchone()
        top = cur.execute(
            "SELECT vehicle FROM fraud_scores WHERE label <> 'clean' ORDER BY score DESC, vehicle LIMIT 1"
        ).fetchone()
    return int(rows), int(events), top[0] if top else None


def balances(client: Any, sources: list[str], consumer: str) -> dict[str, int]:
    """What a user checks: the consumer's tokens + deposit, each producer's credit, the treasury's tokens."""
    out = {"consumer": client.tokens.balance(consumer) + client.market.deposit_of(consumer)}
    for source in sources:
        out[source] = client.market.credit(client.sources.get(source).account)
    out["treasury"] = client.tokens.balance(client.deployment.address("PCCGold"))
    return out


def demo_queries(vehicle: str) -> list[tuple[str, str]]:
    """(name, SQL) of the paid queries the demo runs."""
    return [
        (
            "history of a flagged car",
            "SELECT event_time, event_type, odometer_km, source_id, quality FROM vehicle_history "
            f"WHERE vehicle = '{vehicle}' ORDER BY event_time",
        ),
        (
            "its reconciled mileage",
            "SELECT seq, event_time, odometer_km, reconciled_km, is_outlier, outlier_reason, source_id "
            f"FROM mileage_timeline WHERE vehicle = '{vehicle}' ORDER BY seq",
        ),
        (
            "services and inspections, fleet-wide",
            "SELECT event_type, count(*) AS events, avg(quality) AS quality FROM vehicle_history "
            "WHERE event_type IN ('inspection', 'maintenance') GROUP BY 1 ORDER BY 1",
        ),
    ]


def _settle(api: ServingApi, client: Any, key: str, sources: list[str]) -> tuple[str, int, dict[str, int]]:
    """Settle what is pending: the transaction, its gas and the balance changes it caused."""
    from ledger.keys import address_of

    before = balances(client, sources, address_of(key))
    hashes = api.settle_pending()
    after = balances(client, sources, address_of(key))
    gas = sum(int(client.w3.eth.get_transaction_receipt(h)["gasUsed"]) for h in hashes)
    return (hashes[0] if hashes else ""), gas, {k: after[k] - before[k] for k in after}


def paid_query(api: ServingApi, client: Any, key: str, sources: list[str], name: str, sql: str) -> Any:
    """Quote, run and settle one query; the balance changes its settlement caused."""
    from infra.demo import PaidQuery
    from serving.client import PccClient

    with PccClient(api.url, key) as consumer:
        quote = consumer.quote(sql)
        result = consumer.query(sql, format="json")
    if result.receipt["amount_cents"] != quote["amount_cents"]:
        raise PccStateError(
            f"{name}: charged {result.receipt['amount_cents']} for a quote of {quote['amount_cents']}"
        )
    rows = result.table
    in_rows = dict(Counter(rows.column("source_id").to_pylist())) if "source_id" in rows.column_names else {}
    tx, gas, deltas = _settle(api, client, key, sources)
    return PaidQuery(
        name=name, sql=sql, rows=rows.num_rows, sources_in_rows=in_rows, receipt=result.receipt,
        settle_tx=tx, settle_gas=gas, deltas=deltas,
    )  # fmt: skip


def paid_passport(api: ServingApi, client: Any, key: str, sources: list[str], vehicle: str) -> Any:
    """Buy one passport report of ``vehicle`` (unsigned first: 402 with the price) and settle it."""
    import httpx

    from infra.demo import PaidQuery
    from serving.client import PccClient

    path = f"/passport/{vehicle}/data.json"
    unpaid = httpx.get(api.url + path, timeout=30)
    if unpaid.status_code != 402:
        raise PccStateError(f"an unpaid passport view answered {unpaid.status_code}, not 402")
    with PccClient(api.url, key) as consumer:
        report = consumer.passport(vehicle)
        receipt = next(r for r in consumer.receipts(20) if r["receipt_no"] == report.receipt_no)
    if report.price_cents != int(unpaid.headers["X-PCC-Price-Cents"]):
        raise PccStateError(
            f"charged {report.price_cents} for a report priced {unpaid.headers['X-PCC-Price-Cents']}"
        )
    events = dict(Counter(e["source_id"] for e in report.data["timeline"]))
    tx, gas, deltas = _settle(api, client, key, sources)
    return PaidQuery(
        name="passport report (paid view)", sql=f"GET {path}", rows=sum(events.values()),
        sources_in_rows=events, receipt=receipt, settle_tx=tx, settle_gas=gas, deltas=deltas,
    )  # fmt: skip


def shared_passport(api: ServingApi, vehicle: str, ttl_s: int = 7 * 86_400) -> tuple[str, int]:
    """The owner's share link to ``vehicle``'s passport (as ``pcc passport share`` makes it), opened
    without a signature or payment: the URL and the number of events the shared page shows."""
    import httpx

    from serving.passport import ShareLinks
    from serving.passport.share import SHARE_PARAM, share_passport

    links = ShareLinks.open(api.config.state_dir, api.vault.current_owner)
    link = share_passport(links, api.vault, vehicle, ttl_s, actor="demo")
    page = httpx.get(link.url(api.url), timeout=30)
    data = httpx.get(f"{api.url}/passport/{vehicle}/data.json", params={SHARE_PARAM: link.token}, timeout=30)
    if page.status_code != 200 or data.status_code != 200:
        raise PccStateError(f"the share link answered {page.status_code} (page), {data.status_code} (data)")
    return link.url(api.url), len(data.json()["timeline"])


def chain_gas(client: Any, first_block: int) -> int:
    """Gas of every block mined since ``first_block`` (the demo's whole use of the chain)."""
    last = int(client.w3.eth.block_number)
    return sum(int(client.w3.eth.get_block(n)["gasUsed"]) for n in range(first_block, last + 1))
