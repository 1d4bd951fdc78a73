"""The owner's endpoints (grants, GDPR) — see docs/access.md.

Owner endpoints (signed by an account of ``serving.gdpr_operators``: the
operator acting for an owner it authenticated) grant and revoke a protected
category of a vehicle, export what is held about it, and erase it everywhere
(grant store, key caches, this engine's rows, the master dataset and the
real-time view, then the vault).  How answers carry sealed fields and the keys
to open them: :mod:`serving.sealed`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from pipelines.access import (
    AccessDenied,
    AccessService,
    ErasableStore,
    ParquetRows,
    check_sealed,
    erase_vehicle,
    export_subject,
)
from pipelines.errors import PccError, PccValueError
from serving.auth import Consumer
from serving.config import ServingConfig
from serving.engine.views import ServingStore
from serving.sealed import AccessError, WrappedKeys

__all__ = ["AccessError", "WrappedKeys", "owner_router"]



class ServingRows:
    """This engine's rows of a vehicle (batch versions + real time), as an erasure check: all sealed."""

    name = "serving engine"

    def __init__(self, store: ServingStore) -> None:
        self.store = store

    def erase_vehicle(self, vehicle: str) -> int:
        cols = {c for c, _ in self.store.columns().get("vehicle_history", [])}
        select = ", ".join(c for c in ("event_type", "schema_version", "payload", "lat", "lon") if c in cols)
        with self.store.pin() as (cur, _):
            found = cur.execute(f"SELECT {select} FROM vehicle_history WHERE vehicle = ?", [vehicle])
            names = [d[0] for d in found.description or ()]
            rows = [dict(zip(names, r, strict=True)) for r in found.fetchall()]
        return check_sealed(rows, self.name, vehicle)


# ------------------------------------------------------------------------ owner endpoints


class GrantRequest(BaseModel):
    vehicle: str = Field(description="The vehicle pseudonym v-…")
    category: str = Field(description="A protected category: owner_identity, precise_location, commercial.")
    grantee: str = Field(description="The consumer's X25519 public key, 64 hex.")
    expiry_s: int = Field(0, description="Unix seconds the grant ends (grant only).")


class SubjectRequest(BaseModel):
    vin: str | None = Field(None, description="The vehicle's VIN.")
    vehicle: str | None = Field(None, description="Or its pseudonym v-….")




def _grant_view(grant: Any) -> dict[str, Any]:
    body: dict[str, Any] = grant.to_dict()
    body["grantor"] = body["grantor"].split(":", 1)[0]  # the owner's pseudonym is owner_identity
    body.pop("signature", None)
    return body


def owner_router(
    config: ServingConfig,
    store: ServingStore,
    service: AccessService,
    consumer_of: Callable[[Request], Awaitable[Consumer]],
    parse: Callable[[type[Any], bytes], Any],
) -> APIRouter:
    router = APIRouter()
    operators = {a.lower() for a in config.gdpr_operators}
    views = [
        ParquetRows(config.master_dir, "master dataset"),
        ParquetRows(config.realtime_dir, "real-time view"),
    ]

    async def operator(request: Request) -> Consumer:
        consumer = await consumer_of(request)
        if consumer.account.lower() not in operators:
            raise AccessError(
                AccessDenied(f"account {consumer.account} may not act for owners (serving.gdpr_operators)")
            )
        return consumer

    async def call(fn: Callable[[], Any]) -> Any:
        try:
            return await run_in_threadpool(fn)
        except PccError as exc:
            raise AccessError(exc) from None

    def subject(body: SubjectRequest) -> str:
        if (body.vin is None) == (body.vehicle is None):
            raise AccessError(PccValueError("give exactly one of vin or vehicle"))
        return str(body.vin if body.vin is not None else body.vehicle)

    @router.post(
        "/v1/owner/grants", summary="Grant a protected category of the owner's car to a consumer key"
    )
    async def grant(request: Request) -> dict[str, Any]:
        await operator(request)
        b = parse(GrantRequest, await request.body())
        made = await call(lambda: service.grant_as_owner(b.grantee, b.vehicle, b.category, b.expiry_s))
        return _grant_view(made)

    @router.post(
        "/v1/owner/revoke", summary="Revoke a grant: data written from now on is sealed under a new key"
    )
    async def revoke(request: Request) -> dict[str, Any]:
        await operator(request)
        b = parse(GrantRequest, await request.body())
        epoch = await call(lambda: service.revoke_as_owner(b.grantee, b.vehicle, b.category))
        return {"vehicle": b.vehicle, "category": b.category, "epoch": epoch}

    @router.post("/v1/gdpr/export", summary="Everything held about a vehicle, opened (right of access)")
    async def export(request: Request) -> JSONResponse:
        await operator(request)
        target = subject(parse(SubjectRequest, await request.body()))
        data = await call(lambda: export_subject(target, service.vault, views, actor="serving"))
        body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS, default=str)
        return JSONResponse(orjson.loads(body))

    @router.post("/v1/gdpr/erase", summary="Erase a vehicle everywhere (crypto-shredding)")
    async def erase(request: Request) -> dict[str, Any]:
        await operator(request)
        target = subject(parse(SubjectRequest, await request.body()))
        stores: list[ErasableStore] = [service.store, service.keys, ServingRows(store), *views]
        report = await call(lambda: erase_vehicle(target, service.vault, stores, actor="serving"))
        return dict(report.to_dict())

    return router


