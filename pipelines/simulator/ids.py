"""Deterministic identifiers and timestamps: UUIDv7 from a seeded generator, RFC 3339 text."""

from __future__ import annotations

import numpy as np

_VERSION_7 = np.uint64(0x7000)
_VARIANT = np.uint64(0x8000_0000_0000_0000)
_RAND_B = np.uint64((1 << 62) - 1)


def uuid7s(times_ms: np.ndarray, rng: np.random.Generator) -> list[str]:
    """UUIDv7 text for each event time (RFC 9562): 48-bit ms timestamp, 74 bits from ``rng``.

    Deterministic for a given generator state, so a seed gives the same ids.
    """
    n = len(times_ms)
    if n == 0:
        return []
    rand = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 2), dtype=np.uint64, endpoint=True)
    hi = (times_ms.astype(np.uint64) << np.uint64(16)) | _VERSION_7 | (rand[:, 0] & np.uint64(0x0FFF))
    lo = _VARIANT | (rand[:, 1] & _RAND_B)
    out = []
    for h, low in zip(hi.tolist(), lo.tolist(), strict=True):
        x = f"{h:016x}{low:016x}"
        out.append(f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}")
    return out


def rfc3339_ms(times_ms: np.ndarray) -> list[str]:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` for each epoch-millisecond time."""
    text = np.datetime_as_string(times_ms.astype("datetime64[ms]"), unit="ms")
    return [t + "Z" for t in text.tolist()]


def iso_date(day_ms: int) -> str:
    return str(np.datetime64(day_ms, "ms").astype("datetime64[D]"))
