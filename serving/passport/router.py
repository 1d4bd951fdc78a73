"""The car passport pages: ``passport_router(...)`` returns a FastAPI router to mount on ``pcc serve``.

Routes (``prefix`` defaults to ``/passport``):

* ``GET /passport/{vehicle}``: the HTML page (self-contained: inline CSS, JS and SVG);
* ``GET /passport/{vehicle}/data.json``: the data the page draws (:func:`build_passport`);
* ``GET /passport/{vehicle}/verify/{event_id}``: the proof check of one event
  (:func:`verify_event`), as JSON — free, like ``GET /v1/proof/{event_id}``.

The page and its data are a product.  A request for ``{vehicle}`` (a pseudonym) is answered:

1. with ``?share=<token>``: if the token is the owner's live share link for that
   vehicle (:mod:`serving.passport.share`), free — else 403 saying why;
2. signed as a query is (:mod:`serving.auth`): as one paid report, one receipt
   (:mod:`serving.passport.sales`) — 401 for a bad signature, 402 without funds;
3. otherwise 402 with the report's price (401 on a service that sells no reports).

A VIN instead of a pseudonym is its current owner's own view, with the owner's
bearer token (:mod:`serving.passport.access`).  Errors map to a status in one
place, :func:`_status`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from importlib import resources
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from pipelines.errors import PccError
from serving.auth import HEADER_ACCOUNT, HEADER_SIGNATURE, signed_target
from serving.errors import PaymentRequiredError, ServingError, http_status
from serving.market.pricing import Billing
from serving.passport.access import PSEUDONYM, OwnerAccess, resolve_vehicle
from serving.passport.assemble import build_passport
from serving.passport.chart import mileage_svg, quality_colour
from serving.passport.errors import PassportClosedError, ShareLinkError, VehicleNotFoundError
from serving.passport.sales import PassportSales
from serving.passport.share import SHARE_PARAM, CurrentOwner, ShareLinks
from serving.passport.source import PassportSource
from serving.passport.verify import AuditPaths, RootLookup, verify_event

_ENV = Environment(
    loader=PackageLoader("serving.passport", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["quality_colour"] = quality_colour
#: a passport answer is for whoever paid or holds the link: no shared cache keeps it, no Referer carries it
_PRIVATE = {"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"}
_HOW = (
    "send a signed request (serving.client.PccClient.passport, or pcc passport buy), "
    "or open the owner's share link"
)


def _asset(name: str) -> str:
    return resources.files("serving.passport").joinpath("templates", name).read_text(encoding="utf-8")


def _error_response(exc: PccError, html: bool) -> Response:
    status = http_status(exc)
    headers = dict(_PRIVATE)
    if isinstance(exc, PaymentRequiredError):
        headers["X-PCC-Price-Cents"] = str(exc.quote.get("amount_cents", ""))
    if html:
        page = _ENV.get_template("error.html").render(
            status=status, message=exc.message, css=Markup(_asset("passport.css"))
        )
        return HTMLResponse(page, status_code=status, headers=headers)
    body = (
        exc.detail()
        if isinstance(exc, ServingError)
        else {"error": type(exc).__name__, "message": exc.message}
    )
    return JSONResponse(body, status_code=status, headers=headers)


def render_passport(
    passport: dict[str, Any], base: str, data_url: str | None = None, note: str | None = None
) -> str:
    """The passport page's HTML for an assembled passport.

    ``base`` is the vehicle's URL (its verify links hang under it); ``data_url``
    the page's data.json link (default ``base/data.json``); ``note`` says how the
    page was opened.
    """
    markers = [
        {"event_time": a["event_time"], "kind": "accident", "label": f"accident ({a.get('severity', '?')})"}
        for a in passport["accidents"]
    ]
    if passport["wreck"]["wrecked"]:
        markers.append({"event_time": passport["wreck"]["event_time"], "kind": "wreck", "label": "wreck"})
    return _ENV.get_template("passport.html").render(
        p=passport,
        base=base,
        data_url=data_url or f"{base}/data.json",
        note=note,
        chart=Markup(mileage_svg(passport["readings"], markers)),
        css=Markup(_asset("passport.css")),
        js=Markup(_asset("passport.js")),
    )


def _signed(headers: Mapping[str, str]) -> bool:
    return any(headers.get(h) is not None for h in (HEADER_SIGNATURE, HEADER_ACCOUNT))


def passport_router(  # noqa: C901 (routes are closures over the router's state)
    source: PassportSource,
    roots: RootLookup,
    paths: AuditPaths | None = None,
    owners: OwnerAccess | None = None,
    prefix: str = "/passport",
    sales: PassportSales | None = None,
    shares: ShareLinks | None = None,
) -> APIRouter:
    """The passport routes over ``source``, checking proofs against ``roots`` (audit paths from ``paths``).

    ``sales`` sells reports to signed requests; ``shares`` checks owners' share links.
    Without either, a pseudonym's passport opens for no one (a VIN still for its owner).
    """
    router = APIRouter(prefix=prefix, tags=["passport"])

    def make(vehicle: str, fmt: str, share: str | None, note: str) -> tuple[bytes, Counter[str | None]]:
        """The report's final bytes and its events per producer; raises before anything is sold."""
        passport = build_passport(source, vehicle)
        events: Counter[str | None] = Counter(e["source_id"] for e in passport["timeline"])
        if fmt == "json":
            return orjson.dumps(passport), events
        base = f"{prefix}/{vehicle}"
        data_url = f"{base}/data.json" + (f"?{SHARE_PARAM}={share}" if share else "")
        return render_passport(passport, base, data_url, note).encode("utf-8"), events

    def report(identifier: str, request: Request, fmt: str) -> Response:
        media = "text/html; charset=utf-8" if fmt == "html" else "application/json"
        try:
            headers = dict(_PRIVATE)
            if not PSEUDONYM.match(identifier):  # a VIN: its owner's own view
                vehicle = resolve_vehicle(identifier, request.headers.get("authorization"), owners)
                body, _ = make(vehicle, fmt, None, "Opened by the vehicle's owner.")
            elif (token := request.query_params.get(SHARE_PARAM)) is not None:
                if shares is None:
                    raise ShareLinkError("this service does not open share links")
                link = shares.check(token, identifier)
                note = f"Shared by the owner; the link is valid until {link.expires_text}."
                body, _ = make(identifier, fmt, token, note)
            elif _signed(request.headers):
                if sales is None:
                    raise PassportClosedError(
                        "this service sells no passport reports: open the owner's share link"
                    )
                target = signed_target(request)
                note = "Passport report, paid in PCC_token (the signed receipt: GET /v1/receipts)."
                sale = sales.sell(
                    request.method, target, request.headers, identifier, fmt,
                    lambda: make(identifier, fmt, None, note),
                )  # fmt: skip
                body = sale.body
                headers.update(sale.headers())
            elif sales is None:
                raise PassportClosedError("this passport opens with its owner's share link")
            else:
                raise sales.payment_required(_HOW)
        except PccError as exc:
            return _error_response(exc, html=fmt == "html")
        return Response(body, media_type=media, headers=headers)

    def vehicle_of(identifier: str, request: Request) -> str:
        return resolve_vehicle(identifier, request.headers.get("authorization"), owners)

    @router.get("/{vehicle}", response_class=HTMLResponse, summary="The car passport page (paid, or shared)")
    def page(vehicle: str, request: Request) -> Response:
        return report(vehicle, request, "html")

    @router.get("/{vehicle}/data.json", summary="The data the passport page draws (paid, or shared)")
    def data(vehicle: str, request: Request) -> Response:
        return report(vehicle, request, "json")

    @router.get(
        "/{vehicle}/verify/{event_id}", summary="Check one event's proof against the anchored root (free)"
    )
    def verify(vehicle: str, event_id: str, request: Request) -> Response:
        try:
            pseudonym = vehicle_of(vehicle, request)
            row = source.proof(event_id)
            if row is None or row.get("vehicle") != pseudonym:
                raise VehicleNotFoundError(f"no event {event_id} for vehicle {pseudonym}")
            result = verify_event(row, roots, paths)
        except PccError as exc:
            return _error_response(exc, html=False)
        return JSONResponse(result.as_dict())

    return router


def mount_passport(
    app: FastAPI,
    roots: RootLookup,
    paths: AuditPaths | None = None,
    owners: OwnerAccess | None = None,
    prefix: str = "/passport",
    *,
    billing: Billing | None = None,
    current_owner: CurrentOwner | None = None,
) -> None:
    """Add the passport pages to the serving app, over its store (``app.state.store``, pinned per lookup).

    Reports are sold as queries are: on ``create_app``'s app through its paid queries
    (``app.state.paid``: the same authenticator, funds held with the queries', the same
    receipts and settlement); on another app with ``billing`` given, on
    ``app.state.receipts``.  Share links are those of the store's state dir; with
    ``current_owner`` (``IdentityVault.current_owner``) a sale ends the seller's links.
    """
    from serving.auth import Authenticator, service_domain
    from serving.passport.source import DuckDBPassportSource

    store = app.state.store
    config = store.config
    paid = getattr(app.state, "paid", None)
    sales = None
    if paid is not None:
        sales = PassportSales(paid.billing, paid.receipts, paid.auth, paid.reservations, paid.producer_problems)
    elif billing is not None:
        receipts = app.state.receipts
        auth = Authenticator(receipts, config.max_request_age_s, service_domain(config, billing))
        sales = PassportSales(billing, receipts, auth)
    shares = ShareLinks.open(config.state_dir, current_owner)
    source = DuckDBPassportSource.from_store(store)
    app.include_router(passport_router(source, roots, paths, owners, prefix, sales, shares))
