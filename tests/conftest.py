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
