"""The compiled PCG64 draws are numpy's draws, number for number (pmlsim.pcg64)."""

import numpy as np
import pytest

from pmlsim import pcg64


def _pair(seed):
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng, pcg64.state_of(rng)


def _same_state(rng, st):
    np.testing.assert_array_equal(pcg64.state_of(rng), st)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_uniform_doubles_are_numpys_random(seed):
    rng, st = _pair(seed)
    np.testing.assert_array_equal(pcg64.random(st, 10_000), rng.random(10_000))
    _same_state(rng, st)


# ranges of 1 (no draw), powers of two, small odd ones, and 3e9 (about 30 % of draws rejected)
@pytest.mark.parametrize(
    "low, high",
    [
        (7, 8),
        (0, 2),
        (0, 3),
        (0, 7),
        (5, 1005),
        (0, 16384),
        (1 << 20, 3 << 20),
        (10, 10 + 3_000_000_001),
        (0, (1 << 32) - 1),
    ],
)
def test_integers_are_numpys_integers_with_its_rejections(low, high):
    rng, st = _pair(99)
    for n in (1, 5_001, 2):  # odd counts leave half a word pending for the next call
        np.testing.assert_array_equal(pcg64.integers(st, low, high, n), rng.integers(low, high, n, dtype=np.int64))
        _same_state(rng, st)


def test_standard_exponentials_are_numpys_including_the_ziggurats_rare_paths():
    rng, st = _pair(2024)
    want = rng.standard_exponential(1_000_000)
    times, end = pcg64.exponential_times(st, len(want), 1.0, 0.0)
    np.testing.assert_array_equal(times, np.cumsum(want).astype(np.int64))
    assert end == np.cumsum(want)[-1]
    _same_state(rng, st)
    # the draws past the ziggurat's base (idx 0: the tail, from a second word) were taken
    assert np.count_nonzero(want > pcg64.ZIGGURAT_EXP_R) > 100


@pytest.mark.parametrize("scale, t0", [(100.0, 0.0), (1e9 / 7.77e5, 12.5), (3.3, 1e12)])
def test_exponential_times_are_t0_plus_numpys_scaled_cumsum_truncated(scale, t0):
    rng, st = _pair(5)
    times, end = pcg64.exponential_times(st, 8192, scale, t0)
    t = t0 + np.cumsum(rng.exponential(scale, 8192))
    np.testing.assert_array_equal(times, t.astype(np.int64))
    assert end == t[-1]


def test_mixed_draws_keep_numpys_order_and_pending_half_word():
    rng, st = _pair(77)
    rng.integers(0, 10, 3)  # numpy's generator holds a pending half word when the state is taken
    st = pcg64.state_of(rng)
    assert st[pcg64.HAS_UINT32] == 1
    for n in (3, 8192, 1):
        np.testing.assert_array_equal(pcg64.integers(st, 0, 999, n), rng.integers(0, 999, n, dtype=np.int64))
        np.testing.assert_array_equal(pcg64.random(st, n), rng.random(n))
        times, _ = pcg64.exponential_times(st, n, 10.0, 0.0)
        np.testing.assert_array_equal(times, np.cumsum(rng.exponential(10.0, n)).astype(np.int64))
    _same_state(rng, st)


def test_a_generator_other_than_pcg64_is_refused_by_name():
    with pytest.raises(TypeError, match="PCG64 generator, not MT19937"):
        pcg64.state_of(np.random.Generator(np.random.MT19937(1)))
