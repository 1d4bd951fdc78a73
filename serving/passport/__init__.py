"""The car passport: one web page per vehicle, served by ``pcc serve``.

A page view is a product: a paid report (``PassportSales``: a price per report
set by governance, one signed receipt) or opened by the owner's share link
(``ShareLinks``: a signed, expiring, revocable capability).  Mount it with
``mount_passport(app, roots, paths)`` on the serving app (reports sold through
its paid queries), or ``passport_router(source, roots, paths, owners,
sales=..., shares=...)``;
see docs/passport.md.

The names below are imported on first use (their list is ``__init__.pyi``,
which type checkers read): ``pcc passport --help`` and a command needing one
module do not load DuckDB, Arrow and FastAPI.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
