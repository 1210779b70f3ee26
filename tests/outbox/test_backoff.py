"""Exponential backoff with full jitter (balwatch.backoff)."""

from __future__ import annotations

import pytest

from balwatch.backoff import Backoff


def test_ceiling_doubles_from_base_up_to_cap() -> None:
    policy = Backoff(base=0.5, cap=10.0)
    assert [policy.ceiling(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_ceiling_of_a_very_long_outage_is_the_cap() -> None:
    assert Backoff(base=1.0, cap=300.0).ceiling(100_000) == 300.0


def test_delay_is_full_jitter_over_the_ceiling() -> None:
    draws = iter([0.0, 0.25, 0.999])
    policy = Backoff(base=2.0, cap=100.0, factor=3.0, rand=lambda: next(draws))
    assert [policy.delay(n) for n in (1, 2, 3)] == [0.0, 1.5, pytest.approx(17.982)]


def test_default_random_stays_in_range() -> None:
    policy = Backoff(base=1.0, cap=4.0)
    delays = [policy.delay(5) for _ in range(1000)]
    assert all(0.0 <= d < 4.0 for d in delays)
    assert len(set(delays)) > 900  # jittered, not constant


@pytest.mark.parametrize("kwargs", [{"base": 0.0}, {"base": 5.0, "cap": 1.0}, {"factor": 0.5}])
def test_invalid_policy(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        Backoff().ceiling(0)
