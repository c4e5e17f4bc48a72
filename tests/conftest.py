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


# -- shared by tests/test_model.py and tests/test_train.py -----------------------------------

def new_small():
    import rgflow as rg
    return rg.ResidualMLP(8, 8, 4, 32, 2, seed=3)


def torch_module(model):
    torch = pytest.importorskip("torch")
    # one thread: torch's OpenMP workers otherwise keep spinning after each op and starve
    # OpenBLAS's threads in the rest of this process (a 10x slowdown on 2 cores)
    torch.set_num_threads(1)
    from rgflow.torch_ref import to_torch
    return torch, to_torch(model)


def torch_loss(torch, net, x, t, mask):
    logits = net(torch.from_numpy(x.astype(np.int64)))
    m = torch.from_numpy(mask)
    return torch.nn.functional.cross_entropy(logits[m], torch.from_numpy(t.astype(np.int64))[m])


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


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))
