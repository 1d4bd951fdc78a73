"""Vehicle Identification Numbers (ISO 3779): validation and the check digit.

A VIN has 17 characters from the ISO 3779 alphabet: digits and capital
letters except I, O and Q.  Position 9 is a check digit (0-9 or X) for
vehicles built for North America (world manufacturer identifiers starting
with 1-5) and is checked there; elsewhere it is optional and not checked.
"""

from __future__ import annotations

import re

from pipelines.errors import PccValueError

VIN_LENGTH = 17
_ALPHABET = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
_TRANSLITERATION = {
    **{str(d): d for d in range(10)},
    "A": 1, "B": 2, "C": 3, "D": 4, "E": 5, "F": 6, "G": 7, "H": 8,
    "J": 1, "K": 2, "L": 3, "M": 4, "N": 5, "P": 7, "R": 9,
    "S": 2, "T": 3, "U": 4, "V": 5, "W": 6, "X": 7, "Y": 8, "Z": 9,
}  # fmt: skip
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
#: Characters a VIN may contain, for generators.
VIN_CHARACTERS = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"


def check_digit(vin: str) -> str:
    """The ISO 3779 / FMVSS 115 check digit of a 17-character VIN (position 9)."""
    total = sum(_TRANSLITERATION[c] * w for c, w in zip(vin, _WEIGHTS, strict=True))
    rest = total % 11
    return "X" if rest == 10 else str(rest)


def check_digit_applies(vin: str) -> bool:
    """True for North American vehicles, where position 9 must be the check digit."""
    return vin[:1] in "12345"


def validate_vin(vin: object) -> str:
    """Return the VIN normalised to upper case, or raise a clear :class:`PccValueError`.

    The message says what is wrong without echoing the VIN (it is personal data).
    """
    if not isinstance(vin, str):
        raise PccValueError(f"vin: expected a string of {VIN_LENGTH} characters, got {type(vin).__name__}")
    candidate = vin.strip().upper()
    if len(candidate) != VIN_LENGTH:
        raise PccValueError(f"vin: must have {VIN_LENGTH} characters, got {len(candidate)}")
    if not _ALPHABET.match(candidate):
        bad = sorted({c for c in candidate if c not in VIN_CHARACTERS})
        raise PccValueError(
            f"vin: characters {''.join(bad)!r} are not allowed (ISO 3779: digits and A-Z except I, O, Q)"
        )
    if check_digit_applies(candidate) and candidate[8] != check_digit(candidate):
        raise PccValueError("vin: check digit (position 9) does not match the other characters")
    return candidate


def with_check_digit(vin: str) -> str:
    """Put the correct check digit at position 9 of a 17-character VIN."""
    return vin[:8] + check_digit(vin) + vin[9:]
