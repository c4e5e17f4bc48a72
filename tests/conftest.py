import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def random_stochastic(rng, V, zeros=0.0):
    """A dense random row-stochastic matrix; `zeros` is the fraction of entries forced to 0."""
    T = rng.random((V, V)) + 0.05
    if zeros:
        T[rng.random((V, V)) < zeros] = 0.0
        T[np.arange(V), (np.arange(V) + 1) % V] += 0.1  # a cycle keeps it irreducible
    return T / T.sum(axis=1, keepdims=True)


# Hypothesis profiles for tests/test_fuzz.py: "ci" (default) keeps the file near half a minute
# with >= 2,000 examples in total; HYPOTHESIS_PROFILE=thorough runs ten times more.
try:
    import os as _os

    from hypothesis import HealthCheck, settings

    _common = dict(deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much])
    # derandomized: CI and sanitizer runs see the same examples, so a failure reproduces
    settings.register_profile("ci", max_examples=150, derandomize=True, **_common)
    settings.register_profile("thorough", max_examples=1000, derandomize=False, **_common)
    settings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
