"""The car passport: one web page per vehicle, served by ``pcc serve``.

Mount ``passport_router(source, roots, paths, owners)`` on the serving app;
see docs/passport.md.
"""

from serving.passport.access import OwnerAccess, VaultOwnerAccess
from serving.passport.assemble import build_passport
from serving.passport.router import mount_passport, passport_router, render_passport
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
    "PassportSource",
    "RootLookup",
    "VaultOwnerAccess",
    "Verification",
    "build_passport",
    "mount_passport",
    "passport_router",
    "render_passport",
    "verify_event",
]
