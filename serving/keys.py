"""The key service over HTTP: producers of other organisations get sealing keys, never the vault.

``POST /v1/keys/producer-key`` ``{source_id, public_key}`` registers the
source's X25519 public key (64 hex); ``POST /v1/keys/current``
``{source_id, vin, categories?}`` answers ``{vehicle, wrapped_to, keys:
{category: {epoch, wrapped}}}``, the car's pseudonym and each current data key
wrapped to that registered key (:mod:`pipelines.access.keyservice`).

Both are signed like every request of the serving API (:mod:`serving.auth`:
EIP-712 over the deployment's chain id and Marketplace, the service's host,
method, path, body hash, nonce and expiry), and checked in this order:

1. unsigned, forged, expired, replayed or signed for another deployment: 401;
   past the account's request rate (``serving.rate_per_s``, as every signed
   request of the API): 429, before the body is read;
2. a body that is not the JSON object described (an unknown field - a wrapping
   key named in the request - included): 400;
3. the signer is not the source's registered account on the ledger's
   SourceRegistry, or the source is not registered or is suspended: 403;
4. no wrapping key registered (``/current``): 403; a category that is not
   protected, a malformed VIN or key: 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from pipelines.access.keyservice import CURRENT_PATH, REGISTER_PATH, KeyService
from pipelines.errors import PccError
from serving.auth import Consumer
from serving.ingest.sources import SourceDirectory, check_source
from serving.sealed import AccessError


class ProducerKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_id: str = Field(description="The source, as registered on the ledger (its account signs).")
    public_key: str = Field(description="The source's X25519 public key, 64 hex: keys are wrapped to it.")


class CurrentKeysRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_id: str = Field(description="The source, as registered on the ledger (its account signs).")
    vin: str = Field(description="The car's VIN: keys are given for a car the producer knows.")
    categories: list[str] | None = Field(
        None,
        description="Protected categories (owner_identity, precise_location, commercial); all if absent.",
    )


class CurrentKeysAnswer(BaseModel):
    vehicle: str = Field(description="The car's pseudonym v-…, for the envelope's `vehicle`.")
    wrapped_to: str = Field(description="Fingerprint of the registered X25519 key the keys are wrapped to.")
    keys: dict[str, dict[str, Any]] = Field(
        description="{category: {epoch, wrapped}}: each current data key, HPKE-wrapped (wk:v1:…) to that key, "
        "bound to vehicle, category and epoch."
    )


class ProducerKeyAnswer(BaseModel):
    source_id: str
    fingerprint: str = Field(description="16 hex of the SHA-256 of the registered key.")
    replaced: str | None = Field(description="The fingerprint of the key it replaces, if any.")


class Refusal(BaseModel):
    error: str
    message: str


_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": Refusal, "description": "malformed body, unknown field, category that is not protected, bad VIN"},
    401: {"model": Refusal, "description": "unsigned, forged, expired, replayed or another deployment's"},
    403: {"model": Refusal, "description": "not the source's registered account, source unknown or suspended, "
          "or (current keys) no registered X25519 key"},
    429: {"model": Refusal, "description": "past the account's request rate; see Retry-After"},
}  # fmt: skip


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def keys_router(
    service: KeyService,
    sources: SourceDirectory,
    consumer_of: Callable[[Request], Awaitable[Consumer]],
    parse: Callable[[type[Any], bytes], Any],
    admit: Callable[[str], None] = lambda account: None,
) -> APIRouter:
    """``admit(account)``: counts a request against the account's rate (429 past it)."""
    router = APIRouter()

    async def as_source(request: Request, model: type[Any]) -> Any:
        consumer = await consumer_of(request)  # 401 before anything of the body is read
        admit(consumer.account)  # 429: a source cannot mint pseudonyms and keys for VINs at will
        body = parse(model, await request.body())  # 400
        await run_in_threadpool(check_source, sources, body.source_id, consumer.account)  # 403
        return body

    async def call(fn: Callable[[], Any]) -> Any:
        try:
            return await run_in_threadpool(fn)
        except PccError as exc:
            raise AccessError(exc) from None

    @router.post(
        REGISTER_PATH,
        summary="Register the source's X25519 key the key service wraps to",
        openapi_extra=_body(ProducerKeyRequest),
        responses={200: {"model": ProducerKeyAnswer}, **_REFUSALS},
    )
    async def register(request: Request) -> dict[str, Any]:
        body = await as_source(request, ProducerKeyRequest)
        return dict(await call(lambda: service.register(body.source_id, body.public_key)))

    @router.post(
        CURRENT_PATH,
        summary="A car's pseudonym and current sealing keys, wrapped to the source's registered key",
        openapi_extra=_body(CurrentKeysRequest),
        responses={200: {"model": CurrentKeysAnswer}, **_REFUSALS},
    )
    async def current(request: Request) -> dict[str, Any]:
        body = await as_source(request, CurrentKeysRequest)
        return dict(await call(lambda: service.current_keys(body.source_id, body.vin, body.categories)))

    return router
