"""VIN validation (ISO 3779) and the North American check digit."""

from __future__ import annotations

import pytest

from pipelines.errors import PccValueError
from pipelines.vin import check_digit, validate_vin, with_check_digit


@pytest.mark.parametrize(
    "vin",
    [
        "1HGCM82633A004352",  # Honda Accord, the check-digit example used by NHTSA material
        "1M8GDM9AXKP042788",  # check digit X
        "11111111111111111",  # the classic all-ones VIN is self-consistent
        "WVWZZZ1JZXW000001",  # European VIN: position 9 is not a check digit
    ],
)
def test_known_good_vins_are_accepted(vin: str) -> None:
    assert validate_vin(vin) == vin


def test_vins_are_normalised_to_upper_case() -> None:
    assert validate_vin(" 1hgcm82633a004352 ") == "1HGCM82633A004352"


def test_check_digit_is_computed_per_iso_3779() -> None:
    assert check_digit("1HGCM82633A004352") == "3"
    assert check_digit("1M8GDM9AXKP042788") == "X"
    assert with_check_digit("1HGCM82603A004352") == "1HGCM82633A004352"


def test_a_wrong_check_digit_is_rejected_for_north_american_vins() -> None:
    with pytest.raises(PccValueError, match="check digit"):
        validate_vin("1HGCM82623A004352")


@pytest.mark.parametrize("letter", ["I", "O", "Q"])
def test_letters_outside_the_alphabet_are_rejected_without_echoing_the_vin(letter: str) -> None:
    vin = "WVWZZZ1JZXW00000" + letter
    with pytest.raises(PccValueError) as info:
        validate_vin(vin)
    assert repr(letter) in str(info.value)
    assert vin not in str(info.value)


@pytest.mark.parametrize("vin", ["1HGCM82633A00435", "1HGCM82633A0043521", ""])
def test_wrong_length_is_rejected(vin: str) -> None:
    with pytest.raises(PccValueError, match=f"got {len(vin)}"):
        validate_vin(vin)


def test_a_non_string_is_rejected() -> None:
    with pytest.raises(PccValueError, match="got int"):
        validate_vin(12345678901234567)
