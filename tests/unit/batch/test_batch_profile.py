"""Which seasonal profile a batch run judges cars against: the published version's while the
fleet's measured seasons stay within batch.profile_tolerance of it, else the new one (every car redone)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from batch.incremental import reference_profile
from pipelines.settings import BatchSettings

TOLERANCE = BatchSettings().profile_tolerance
twelfths = st.lists(st.floats(0.2, 2.0, allow_nan=False).map(lambda x: round(x, 2)), min_size=12, max_size=12)


@given(previous=twelfths, nudges=st.lists(st.integers(-5, 5), min_size=12, max_size=12))
def test_a_profile_that_moved_less_than_the_tolerance_keeps_the_versions_reference(
    previous: list[float], nudges: list[int]
) -> None:
    measured = tuple(round(p + n / 100, 2) for p, n in zip(previous, nudges, strict=True))
    used, moved = reference_profile(tuple(previous), measured, TOLERANCE)
    assert used == tuple(previous) and not moved  # the carried cars and the redone ones agree


@given(previous=twelfths, month=st.integers(0, 11), shift=st.sampled_from([-0.3, -0.06, 0.06, 0.3]))
def test_seasons_that_moved_further_make_every_car_be_redone_with_the_new_profile(
    previous: list[float], month: int, shift: float
) -> None:
    measured = list(previous)
    measured[month] = round(measured[month] + shift, 2)
    used, moved = reference_profile(tuple(previous), tuple(measured), TOLERANCE)
    assert moved and used == tuple(measured)


def test_the_first_version_measures_and_one_without_a_recorded_profile_is_redone() -> None:
    measured = (1.2,) * 6 + (0.8,) * 6
    assert reference_profile(None, measured, TOLERANCE) == (measured, False)
    assert reference_profile((), measured, TOLERANCE) == (measured, True)  # made before profiles were kept
