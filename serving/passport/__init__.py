"""The car passport: one web page per vehicle, served by ``pcc serve``.

A page view is a product: a paid report (``PassportSales``: a price per report
set by governance, one signed receipt) or opened by the owner's share link
(``ShareLinks``: a signed, expiring, revocable capability).  Mount it with
``mount_passport(app, roots, paths)`` on the serving app (reports sold through
its paid queries), or ``passport_router(source, roots, paths, owners,
sales=..., shares=...)``;
see docs/passport.md.
"""

from serving.passport.access import OwnerAccess, VaultOwnerAccess
from serving.passport.assemble import build_passport
from serving.passport.router import mount_passport, passport_router, render_passport
from serving.passport.sales import PassportSales, report_quote
from serving.passport.share import ShareLink, ShareLinks, ShareStore, parse_ttl
from serving.passport.source import DuckDBPassportSource, InMemoryPassportSource, PassportSource
from serving.passport.verify import (
    AuditPaths,
    InMemoryRoots,
    LeafFilePaths,
    RootLookup,
    Verification,
    verify_event,
)

__all__ = [
    "AuditPaths",
    "DuckDBPassportSource",
    "InMemoryPassportSource",
    "InMemoryRoots",
    "LeafFilePaths",
    "OwnerAccess",
    "PassportSales",
    "PassportSource",
    "RootLookup",
    "ShareLink",
    "ShareLinks",
    "ShareStore",
    "VaultOwnerAccess",
    "Verification",
    "build_passport",
    "mount_passport",
    "parse_ttl",
    "passport_router",
    "render_passport",
    "report_quote",
    "verify_event",
]
