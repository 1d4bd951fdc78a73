"""The car passport pages: ``passport_router(...)`` returns a FastAPI router to mount on ``pcc serve``.

Routes (``prefix`` defaults to ``/passport``):

* ``GET /passport/{vehicle}``: the HTML page (self-contained: inline CSS, JS and SVG);
* ``GET /passport/{vehicle}/data.json``: the data the page draws (:func:`build_passport`);
* ``GET /passport/{vehicle}/verify/{event_id}``: the proof check of one event
  (:func:`verify_event`), as JSON.

``{vehicle}`` is a pseudonym, or a VIN when ``owners`` is given and the
request carries the owner's bearer token (see :mod:`serving.passport.access`).
Errors map to a status in one place, :func:`_error_response`.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from pipelines.errors import PccError, PccNotFoundError, PccPermissionError, PccTransientError, PccValueError
from serving.passport.access import OwnerAccess, resolve_vehicle
from serving.passport.assemble import build_passport
from serving.passport.chart import mileage_svg, quality_colour
from serving.passport.errors import PassportError, VehicleNotFoundError
from serving.passport.source import PassportSource
from serving.passport.verify import AuditPaths, RootLookup, verify_event

_ENV = Environment(
    loader=PackageLoader("serving.passport", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["quality_colour"] = quality_colour


def _asset(name: str) -> str:
    return resources.files("serving.passport").joinpath("templates", name).read_text(encoding="utf-8")


def _status(exc: PccError) -> int:
    if isinstance(exc, PassportError):
        return exc.status
    for cls, status in (
        (PccValueError, 400),
        (PccPermissionError, 403),
        (PccNotFoundError, 404),
        (PccTransientError, 503),
    ):
        if isinstance(exc, cls):
            return status
    return 500


def _error_response(exc: PccError, html: bool) -> Response:
    status = _status(exc)
    if html:
        page = _ENV.get_template("error.html").render(
            status=status, message=exc.message, css=Markup(_asset("passport.css"))
        )
        return HTMLResponse(page, status_code=status)
    return JSONResponse({"error": type(exc).__name__, "message": exc.message}, status_code=status)


def render_passport(passport: dict[str, Any], base: str) -> str:
    """The passport page's HTML for an assembled passport; ``base`` is the vehicle's URL."""
    markers = [
        {"event_time": a["event_time"], "kind": "accident", "label": f"accident ({a.get('severity', '?')})"}
        for a in passport["accidents"]
    ]
    if passport["wreck"]["wrecked"]:
        markers.append({"event_time": passport["wreck"]["event_time"], "kind": "wreck", "label": "wreck"})
    return _ENV.get_template("passport.html").render(
        p=passport,
        base=base,
        chart=Markup(mileage_svg(passport["readings"], markers)),
        css=Markup(_asset("passport.css")),
        js=Markup(_asset("passport.js")),
    )


def passport_router(
    source: PassportSource,
    roots: RootLookup,
    paths: AuditPaths | None = None,
    owners: OwnerAccess | None = None,
    prefix: str = "/passport",
) -> APIRouter:
    """The passport routes over ``source``, checking proofs against ``roots`` (audit paths from ``paths``)."""
    router = APIRouter(prefix=prefix, tags=["passport"])

    def vehicle_of(identifier: str, request: Request) -> str:
        return resolve_vehicle(identifier, request.headers.get("authorization"), owners)

    @router.get("/{vehicle}", response_class=HTMLResponse, summary="The car passport page")
    def page(vehicle: str, request: Request) -> Response:
        try:
            pseudonym = vehicle_of(vehicle, request)
            passport = build_passport(source, pseudonym)
        except PccError as exc:
            return _error_response(exc, html=True)
        return HTMLResponse(render_passport(passport, f"{prefix}/{pseudonym}"))

    @router.get("/{vehicle}/data.json", summary="The data the passport page draws")
    def data(vehicle: str, request: Request) -> Response:
        try:
            passport = build_passport(source, vehicle_of(vehicle, request))
        except PccError as exc:
            return _error_response(exc, html=False)
        return JSONResponse(passport)

    @router.get("/{vehicle}/verify/{event_id}", summary="Check one event's proof against the anchored root")
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
) -> None:
    """Add the passport pages to the serving app, reading its store (``app.state.store``, pinned per request)."""
    from serving.passport.source import DuckDBPassportSource

    source = DuckDBPassportSource.from_store(app.state.store)
    app.include_router(passport_router(source, roots, paths, owners, prefix))
