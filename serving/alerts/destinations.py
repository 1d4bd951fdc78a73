"""Which URLs a subscription may name, and which addresses a delivery may reach (SSRF).

Production: ``https://`` only, and every address the host resolves to must be
public (no loopback, private, link-local, shared, multicast, reserved or
unspecified address: the platform's own network is out of reach).  The check
runs when the subscription is made and again before every delivery attempt, so
a name that later resolves inside is refused then; and the connection itself
goes to an address checked by the same rule at connect time
(:func:`checked_address`, used by the dispatcher's network backend), so a name
that answers a public address to the check and a private one to the connection
(DNS rebinding) still reaches nothing inside; redirects are never followed.
Development: ``http://`` and ``https://`` to loopback are allowed as well (a
receiver on the developer's machine).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from serving.alerts.errors import DestinationRefused

#: host -> the IP addresses it resolves to (``socket.getaddrinfo`` in production)
Resolver = Callable[[str, int], Iterable[str]]

MAX_URL_LENGTH = 2048


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DestinationRefused(f"destination host {host} does not resolve ({exc.strerror})") from None
    return sorted({str(info[4][0]) for info in infos})


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL already checked: the key of its delivery queue."""
    parts = urlsplit(url)
    return (
        parts.scheme,
        (parts.hostname or "").lower(),
        parts.port or (443 if parts.scheme == "https" else 80),
    )


def check_url(url: str, *, development: bool, resolve: Resolver = system_resolver) -> list[str]:
    """Refuse (:class:`DestinationRefused`) a destination this deployment may not deliver to;
    returns the addresses it resolved to."""
    if len(url) > MAX_URL_LENGTH:
        raise DestinationRefused(f"destination URL longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DestinationRefused("destination URL does not parse") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("https", "http"):
        raise DestinationRefused(f"destination URL must be https:// (got {scheme or 'no'} scheme)")
    if not host:
        raise DestinationRefused("destination URL has no host")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("destination URL must not carry credentials (user:password@)")
    if parts.fragment:
        raise DestinationRefused("destination URL must not carry a #fragment")
    if scheme != "https" and not development:
        raise DestinationRefused("destination URL must be https:// (got http scheme)")
    addresses = _allowed(host, port or 443, development=development, resolve=resolve)
    if scheme != "https" and not all(_loopback(ipaddress.ip_address(a)) for a in addresses):
        raise DestinationRefused(
            "destination URL must be https://"
            + (" (http:// only to loopback in development mode)" if development else "")
        )
    return addresses


def _allowed(host: str, port: int, *, development: bool, resolve: Resolver) -> list[str]:
    """The addresses ``host`` resolves to, if a delivery may reach every one of them."""
    addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(host, port)]
    if not addresses:
        raise DestinationRefused(f"destination host {host} does not resolve")
    if development and all(_loopback(a) for a in addresses):
        return [str(a) for a in addresses]
    inside = [a for a in addresses if not _public(a)]
    if inside:
        raise DestinationRefused(
            f"destination host {host} resolves to a non-public address ({inside[0]}): "
            "deliveries never go into a private, loopback or link-local network"
        )
    return [str(a) for a in addresses]


def checked_address(host: str, port: int, *, development: bool, resolve: Resolver = system_resolver) -> str:
    """The address a delivery connects to: ``host`` resolved once, now, and checked as :func:`check_url`
    checks it (the connection goes to this address; TLS still verifies the certificate of ``host``)."""
    return _allowed(host, port, development=development, resolve=resolve)[0]
