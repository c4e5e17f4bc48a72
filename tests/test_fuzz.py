"""Property-based tests of every public entry point (issue 7).

Arbitrary dtypes, shapes (0-d, empty, huge zero-stride views that allocate nothing), layouts
(Fortran, negative and non-unit strides, read-only), NaN/Inf, out-of-range ids and wrong Python
types.  The only acceptable outcomes: the result of the same call on a contiguous, exactly
converted copy, or TypeError/ValueError/rgflow.MemoryLimitError whose message names the
argument.  Profiles live in conftest.py (HYPOTHESIS_PROFILE=thorough for more examples).
"""
import inspect
import types

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.lib.stride_tricks import as_strided

import rgflow as rg
from rgflow import _core
from rgflow.experiments import Config

DTYPES = [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint32, np.uint64, np.bool_,
          np.float16, np.float32, np.float64, np.complex128, object]
WEIRD = [None, 1.5, -1, 0, 2**70, -2**70, "x", b"x", [], [[1]], {}, object(), True,
         float("nan"), float("inf"), np.float64(2.0), np.int64(3), 1j]
ERRORS = (TypeError, ValueError, rg.MemoryLimitError)

CHAIN = rg.MarkovChain.lazy(3, 2.0)
V, L = 3, 5
MODEL = rg.ResidualMLP(V, L, 2, 4, 2, seed=1)


def expect_error(exc, *names):
    """exc must be an accepted type and its message must name one of `names`."""
    assert isinstance(exc, ERRORS), repr(exc)
    msg = str(exc)
    assert any(n in msg for n in names), "%r names none of %s" % (msg, names)


def call(f, *names):
    """(True, result) or (False, exception) after checking the exception is acceptable."""
    try:
        return True, f()
    except ERRORS as exc:
        expect_error(exc, *names)
        return False, exc


@st.composite
def layouts(draw, base):
    """The same values as `base` in a random memory layout (every one keeps the values)."""
    kind = draw(st.sampled_from(["c", "f", "neg", "strided", "readonly", "unaligned"]))
    if base.size > 1 and 0 in base.strides:
        return base  # a huge zero-stride view: never copy it
    a = np.array(base, copy=True)
    if a.ndim == 0 or a.dtype == object:
        return a
    if kind == "f":
        a = np.asfortranarray(a)
    elif kind == "neg":  # a reversed copy read backwards: negative strides, same values
        a = a[(slice(None, None, -1),) * a.ndim].copy()[(slice(None, None, -1),) * a.ndim]
    elif kind == "strided":
        big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
        big[(slice(None, None, 2),) * a.ndim] = a
        a = big[(slice(None, None, 2),) * a.ndim]
    elif kind == "readonly":
        a.setflags(write=False)
    elif kind == "unaligned" and a.dtype.itemsize > 1:
        buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
        u = np.frombuffer(buf[1:].data, dtype=a.dtype).reshape(a.shape)
        u[...] = a
        a = u
    np.testing.assert_array_equal(a, base)
    return a


def arrays_of(dtypes, shapes, elements=None):
    return st.sampled_from(dtypes).flatmap(
        lambda dt: hnp.arrays(dt, shapes, elements=elements(dt) if elements else None)
        if dt is not object else shapes.map(lambda s: np.full(s, 1, dtype=object)))


def huge(dtype, shape):
    """A zero-stride view: any shape, one element of memory."""
    return as_strided(np.zeros(1, dtype=dtype), shape=shape, strides=(0,) * len(shape))


# every copy of these needs > 1 TB, more than any test machine has
HUGE_2D = st.sampled_from([(2**28, 2**28), (2**40, 5), (5, 2**40), (2**31, 2**10)])


# -- MarkovChain ------------------------------------------------------------------------------

def stochastic(draw, n):
    T = np.array(draw(hnp.arrays(np.float64, (n, n), elements=st.floats(0.05, 1.0))))
    return T / T.sum(axis=1, keepdims=True)


@given(st.data())
def test_markov_chain_constructor(data):
    n = data.draw(st.integers(2, 5))
    kind = data.draw(st.sampled_from(["valid", "dtype", "garbage", "weird", "huge", "shape"]))
    T = stochastic(data.draw, n)
    if kind == "dtype":
        T = T.astype(data.draw(st.sampled_from(DTYPES)))
    elif kind == "garbage":
        T = data.draw(hnp.arrays(np.float64, (n, n)))  # NaN, Inf, negatives, anything
    elif kind == "weird":
        T = data.draw(st.sampled_from(WEIRD))
    elif kind == "huge":
        T = huge(np.float64, (2**28, 2**28))
    elif kind == "shape":
        T = data.draw(arrays_of([np.float64], hnp.array_shapes(min_dims=0, max_dims=3,
                                                                min_side=0, max_side=3)))
    if isinstance(T, np.ndarray) and T.ndim == 2 and T.dtype != object:
        T = data.draw(layouts(T))
    ok, chain = call(lambda: rg.MarkovChain(T), "transition", "stationary")
    if ok:
        ref = rg.MarkovChain(np.ascontiguousarray(T, dtype=np.float64))
        np.testing.assert_array_equal(chain.stationary, ref.stationary)
        np.testing.assert_allclose(chain.stationary @ chain.transition, chain.stationary,
                                   atol=1e-12)


@given(st.one_of(st.sampled_from(WEIRD + [65536, 70000, 10**6]), st.integers(-3, 40)),
       st.one_of(st.sampled_from(WEIRD), st.floats(allow_nan=True)))
def test_markov_chain_lazy_random(n_states, xi):
    for make in (rg.MarkovChain.lazy, rg.MarkovChain.random):
        ok, chain = call(lambda: make(n_states, xi), "n_states", "xi")
        if ok:
            assert chain.n_states == n_states
            # documented: |lambda_2| within 1e-12 of 0 or 1 counts as 0 or 1
            if 0.05 < xi < 1e4:
                assert chain.correlation_length == pytest.approx(xi, rel=1e-6, abs=1e-9)


@given(st.one_of(st.sampled_from(WEIRD), st.integers(-2, 40), st.just(10**12), st.just(2**62)),
       st.one_of(st.sampled_from(WEIRD), st.integers(-2, 40), st.just(10**6), st.just(2**62)),
       st.one_of(st.sampled_from(WEIRD), st.integers(-1, 2**64)))
def test_sample(n, length, seed):
    ok, x = call(lambda: CHAIN.sample(n, length, seed=seed), "n", "length", "seed")
    if ok:
        assert x.shape == (n, length) and x.dtype == np.int32
        assert x.min() >= 0 and x.max() < V
        np.testing.assert_array_equal(x, CHAIN.sample(int(n), int(length), seed=int(seed)))


def token_arrays(hi):
    return arrays_of(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
                     lambda dt: st.integers(-2, hi) if np.dtype(dt).kind in "iu" and
                     np.dtype(dt).kind != "u" else None)


@st.composite
def masked_batches(draw):
    """(tokens, mask) mostly valid, sometimes broken in one way, in any layout."""
    n, length = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    tokens = CHAIN.sample(n, length, seed=draw(st.integers(0, 100)))
    mask = np.array(draw(hnp.arrays(np.bool_, (n, length))))
    mask[0, 0] = True
    masked = np.where(mask, V, tokens).astype(draw(st.sampled_from(
        [np.int32, np.int64, np.uint8, np.int16, np.uint64])))
    kind = draw(st.sampled_from(["valid"] * 3 + ["tokens", "mask", "huge", "weird"]))
    if kind == "tokens":
        masked = draw(token_arrays(V + 2))
    elif kind == "mask":
        mask = draw(arrays_of(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                       max_side=6)))
    elif kind == "huge":
        shape = draw(HUGE_2D)
        masked, mask = huge(np.int32, shape), huge(np.bool_, shape)
    elif kind == "weird":
        masked = draw(st.sampled_from(WEIRD))
    if isinstance(masked, np.ndarray) and masked.dtype != object:
        masked = draw(layouts(masked))
    if isinstance(mask, np.ndarray) and mask.dtype != object:
        mask = draw(layouts(mask))
    return tokens, masked, mask


@given(masked_batches())
def test_posterior(batch):
    tokens, masked, mask = batch
    ok, post = call(lambda: CHAIN.posterior(masked, mask), "tokens", "mask")
    if ok:
        ref = CHAIN.posterior(np.ascontiguousarray(masked, dtype=np.int32),
                              np.ascontiguousarray(mask))
        np.testing.assert_array_equal(post, ref)
        np.testing.assert_allclose(post.sum(axis=-1), 1.0, atol=1e-12)


@given(masked_batches())
def test_bayes_loss(batch):
    tokens, masked, mask = batch
    if isinstance(masked, np.ndarray) and masked.shape == tokens.shape:
        masked = np.where(np.asarray(mask, dtype=bool), tokens, masked) \
            if np.shape(mask) == tokens.shape else masked
    ok, loss = call(lambda: CHAIN.bayes_loss(masked, mask), "tokens", "mask")
    if ok:
        ref = CHAIN.bayes_loss(np.ascontiguousarray(masked, dtype=np.int32),
                               np.ascontiguousarray(mask))
        assert loss == ref and np.isfinite(loss) and loss >= 0


@given(masked_batches(), st.one_of(st.floats(-1, 2), st.sampled_from(WEIRD)),
       st.one_of(st.integers(-1, 8), st.sampled_from(WEIRD)),
       st.one_of(st.integers(-1, 5), st.sampled_from(WEIRD)))
def test_mask_tokens(batch, rate, span, mask_id):
    tokens = batch[1]
    ok, out = call(lambda: rg.mask_tokens(tokens, rate=rate, span=span, mask_id=mask_id),
                   "tokens", "rate", "span", "mask_id")
    if ok:
        masked, mask = out
        ref = rg.mask_tokens(np.ascontiguousarray(tokens, dtype=np.int32), rate=rate,
                             span=span, mask_id=mask_id)
        np.testing.assert_array_equal(masked, ref[0])
        np.testing.assert_array_equal(mask, ref[1])
        assert (masked[mask] == mask_id).all() and mask.any(axis=1).all()


# -- ResidualMLP ------------------------------------------------------------------------------

@st.composite
def model_inputs(draw):
    n = draw(st.integers(1, 4))
    tokens = draw(hnp.arrays(np.int64, (n, L), elements=st.integers(0, V - 1)))
    mask = draw(hnp.arrays(np.bool_, (n, L)))
    mask[-1, -1] = True
    masked = np.where(mask, V, tokens)
    which = draw(st.sampled_from(["valid"] * 3 + ["masked", "tokens", "mask", "huge"]))
    if which == "huge":
        return huge(np.int32, draw(HUGE_2D)), tokens, mask
    if which == "masked":
        masked = draw(token_arrays(V + 2))
    elif which == "tokens":
        tokens = draw(token_arrays(V + 1))
    elif which == "mask":
        mask = draw(arrays_of(DTYPES, st.sampled_from([(n, L), (n, L + 1), (), (0, L)])))
    out = []
    for a in (masked, tokens, mask):
        if a.dtype != object and draw(st.booleans()):
            a = a.astype(draw(st.sampled_from([np.int8, np.uint16, np.int32, np.uint64]))) \
                if a.dtype.kind in "iu" else a
        out.append(draw(layouts(a)) if a.dtype != object else a)
    return tuple(out)


def contiguous(masked, tokens, mask):
    # casting the drawn inputs (NaN, complex, ...) is lossy on purpose: no warnings from it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
        return (np.ascontiguousarray(masked, dtype=np.int32),
                np.ascontiguousarray(tokens, dtype=np.int32), np.ascontiguousarray(mask))


@given(model_inputs())
def test_model_logits_and_stream(inputs):
    masked = inputs[0]
    ok, logits = call(lambda: MODEL.logits(masked), "tokens")
    if ok:
        np.testing.assert_array_equal(logits, MODEL.logits(contiguous(*inputs)[0]))
    ok2, stream = call(lambda: MODEL.residual_stream(masked), "tokens")
    assert ok2 == ok
    if ok:
        np.testing.assert_array_equal(stream, MODEL.residual_stream(contiguous(*inputs)[0]))


@given(model_inputs())
def test_model_loss_and_gradients(inputs):
    ok, loss = call(lambda: MODEL.loss(*inputs), "tokens", "targets", "mask")
    if ok:
        assert loss == MODEL.loss(*contiguous(*inputs))
    ok2, out = call(lambda: MODEL.gradients(*inputs), "tokens", "mask")
    if ok2:
        ref_loss, ref = MODEL.gradients(*contiguous(*inputs))
        assert out[0] == ref_loss
        for k in ref:
            np.testing.assert_array_equal(out[1][k], ref[k])


@given(st.lists(st.one_of(st.integers(-2, 9), st.sampled_from(WEIRD)), min_size=5, max_size=5),
       st.one_of(st.booleans(), st.sampled_from(WEIRD)))
def test_model_constructor(args, block_ln):
    names = ("n_states", "length", "width", "hidden", "depth", "block_ln", "model too large")
    ok, m = call(lambda: rg.ResidualMLP(*args, block_ln=block_ln), *names)
    if ok:
        assert m.config == dict(n_states=args[0], length=args[1], width=args[2],
                                hidden=args[3], depth=args[4], block_ln=bool(block_ln))
        assert np.isfinite(m.params).all()


@given(st.sampled_from([(10**6, 10**6, 10**6, 10**6, 10**6), (8, 10**4, 10**4, 10**6, 100),
                        (8, 2**40, 2**20, 1, 1), (65535, 2**20, 2**20, 2**20, 0)]))
def test_model_constructor_huge(args):
    with pytest.raises(ERRORS) as info:
        rg.ResidualMLP(*args)
    expect_error(info.value, "model too large", "ResidualMLP parameters", "n_states")


@given(st.data())
def test_load_state_dict(data):
    model = rg.ResidualMLP(V, L, 2, 4, 1, seed=2)
    state = model.state_dict()
    name = data.draw(st.sampled_from(sorted(state)))
    kind = data.draw(st.sampled_from(["dtype", "nan", "shape", "layout", "weird", "missing"]))
    value = state[name] * 3
    if kind == "dtype":
        value = value.astype(data.draw(st.sampled_from(DTYPES)))
    elif kind == "nan":
        with np.errstate(over="ignore"):  # 1e300 becomes inf in float32, as intended
            value.flat[data.draw(st.integers(0, value.size - 1))] = data.draw(
                st.sampled_from([np.nan, np.inf, -np.inf, 1e300]))
        value = value.astype(np.float64)
    elif kind == "shape":
        value = value.reshape(-1)[:-1]
    elif kind == "layout":
        value = data.draw(layouts(value))
    elif kind == "weird":
        value = data.draw(st.sampled_from(WEIRD))
    state[name] = value
    if kind == "missing":
        del state[name]
    before = model.params.copy()
    try:
        model.load_state_dict(state)
    except (TypeError, ValueError, KeyError) as exc:
        assert name in str(exc)
        np.testing.assert_array_equal(model.params, before)  # all or nothing
        return
    np.testing.assert_array_equal(model.named_params()[name],
                                  np.asarray(value).astype(np.float32))


TRAIN_ARGS = dict(steps=st.integers(-1, 3), batch_size=st.integers(-1, 4),
                  lr=st.one_of(st.floats(-1, 1e3), st.just(float("nan")), st.just(1e308)), weight_decay=st.floats(-1, 1),
                  mask_rate=st.floats(-0.5, 1.5), mask_span=st.integers(-1, 3),
                  seed=st.integers(-1, 2**64), warmup=st.integers(-1, 3),
                  max_grad_norm=st.one_of(st.none(), st.floats(allow_nan=True)),
                  eval_size=st.integers(-1, 8))


@settings(max_examples=60)
@given(st.fixed_dictionaries({}, optional={k: st.one_of(v, st.sampled_from(WEIRD))
                                           for k, v in TRAIN_ARGS.items()}))
def test_train_arguments(kwargs):
    model = rg.ResidualMLP(V, L, 2, 4, 1, seed=3)
    kwargs.setdefault("steps", 2)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("eval_size", 4)
    try:
        hist = rg.train(model, CHAIN, progress=False, **kwargs)
    except FloatingPointError as exc:  # documented: a huge lr diverges
        msg = str(exc)
        assert "at step %d" % (model.step - ("parameter" in msg)) in msg
        if "training loss became" in msg:  # that step was not applied
            assert np.isfinite(model.params).all()
        return
    except ERRORS as exc:
        expect_error(exc, *kwargs)
        assert model.step == 0
        return
    assert model.step == kwargs["steps"] == len(hist.losses)
    assert np.isfinite(model.params).all() and np.isfinite(hist.losses).all()


# -- analysis ---------------------------------------------------------------------------------

def real_matrix(draw, shape):
    return np.array(draw(hnp.arrays(np.float64, shape, elements=st.floats(-1e3, 1e3))))


@st.composite
def representations(draw, min_dims=2, max_dims=3, name_shape=None):
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1,
                                  max_side=5)) if name_shape is None else name_shape
    kind = draw(st.sampled_from(["valid"] * 3 + ["dtype", "nan", "shape", "huge", "weird",
                                                 "bigint"]))
    X = real_matrix(draw, shape)
    if kind == "dtype":
        dt = draw(st.sampled_from(DTYPES))
        X = np.round(X).astype(dt) if np.dtype(dt).kind in "iub" else X.astype(dt)
    elif kind == "nan":
        X.flat[draw(st.integers(0, X.size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    elif kind == "shape":
        X = draw(arrays_of([np.float64, np.float32], hnp.array_shapes(
            min_dims=0, max_dims=4, min_side=0, max_side=3)))
    elif kind == "huge":  # each one's memory check fails: none may start hours of SVDs
        return huge(draw(st.sampled_from([np.float64, np.float32, np.int16])),
                    draw(st.sampled_from([(2**28, 2**28), (2**20, 2**20, 2**10, 3),
                                          (2**31 + 1, 2), (7, 2**31 + 1), (10**5, 10**5)])))
    elif kind == "weird":
        return draw(st.sampled_from(WEIRD))
    elif kind == "bigint":
        X = np.full(shape, 2**60 + 1, dtype=np.int64)
    if isinstance(X, np.ndarray) and X.dtype != object:
        X = draw(layouts(X))
    return X


def exact_float64(X):
    return np.ascontiguousarray(np.asarray(X), dtype=np.float64)


@given(representations(), st.sampled_from(["erank", "participation", "stable", "numerical"]),
       st.booleans())
def test_effective_rank(X, measure, center):
    ok, r = call(lambda: rg.effective_rank(X, measure, center=center), "X")
    if ok:
        ref = rg.effective_rank(exact_float64(X), measure, center=center)
        np.testing.assert_allclose(r, ref, rtol=1e-12, atol=1e-12)


@given(representations(), st.booleans())
def test_singular_values(X, center):
    ok, s = call(lambda: rg.singular_values(X, center=center), "X")
    if ok:
        A = exact_float64(X)
        if center:
            A = A - A.mean(axis=-2, keepdims=True)
        ref = np.linalg.svd(A, compute_uv=False)
        scale = max(1.0, float(np.abs(ref).max(initial=0)))
        np.testing.assert_allclose(s, ref, atol=1e-9 * scale)


@given(representations(max_dims=2), representations(max_dims=2), st.booleans())
def test_linear_cka(X, Y, debiased):
    ok, c = call(lambda: rg.linear_cka(X, Y, debiased=debiased), "X", "Y")
    if ok:
        A, B = exact_float64(X), exact_float64(Y)
        ref = rg.linear_cka(A, B, debiased=debiased)
        np.testing.assert_allclose(c, ref, rtol=1e-10, atol=1e-12, equal_nan=True)
        if not debiased:
            A, B = A - A.mean(0), B - B.mean(0)
            with np.errstate(all="ignore"):
                num = np.linalg.norm(B.T @ A) ** 2
                den = np.linalg.norm(A.T @ A) * np.linalg.norm(B.T @ B)
                expect = num / den if den > 0 else np.nan
            if np.isfinite(expect) and np.isfinite(c) and den > 1e-12:
                assert c == pytest.approx(expect, rel=1e-8, abs=1e-10)


@given(representations(min_dims=4, max_dims=4), st.sampled_from(["position", "pooled",
                                                                  "stream"]))
def test_rank_profile(stream, level):
    ok, prof = call(lambda: rg.rank_profile(stream, level), "stream", "X")
    if ok:
        np.testing.assert_allclose(prof, rg.rank_profile(exact_float64(stream), level),
                                   rtol=1e-12, atol=1e-12)


@given(representations(min_dims=3, max_dims=4), st.sampled_from(["stream", "pooled"]),
       st.booleans())
def test_drift_and_cka_matrix(stream, level, debiased):
    names = ("stream", "layer", "layers", "X")
    ok, d = call(lambda: rg.drift_profile(stream, level, debiased), *names)
    ok2, m = call(lambda: rg.cka_matrix(stream, level, debiased), *names)
    assert ok == ok2
    if ok:
        ref = exact_float64(stream)
        np.testing.assert_allclose(d, rg.drift_profile(ref, level, debiased), rtol=1e-10,
                                   atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(m, rg.cka_matrix(ref, level, debiased), rtol=1e-10,
                                   atol=1e-12, equal_nan=True)


@given(st.sampled_from(["tol", "measure", "n_threads", "squared"]),
       st.sampled_from(WEIRD + [-1.0, "spectrum"]))
def test_analysis_options(option, value):
    X = np.arange(12.0).reshape(4, 3) ** 2
    kwargs = {option: value}
    if option == "tol":
        kwargs["measure"] = "numerical"
    ok, r = call(lambda: rg.effective_rank(X, **kwargs), option, "squared")
    if ok:
        assert np.isfinite(r)


# -- experiments and sweeps -------------------------------------------------------------------

@given(st.sampled_from(sorted(Config.__dataclass_fields__)),
       st.one_of(st.sampled_from(WEIRD), st.integers(-3, 3), st.floats(allow_nan=True),
                 st.text(max_size=3)))
def test_config_fields(name, value):
    ok, c = call(lambda: Config(**{name: value}), name)
    if ok:
        assert getattr(c, name) == value
        assert Config.from_dict(c.to_dict()) == c


@given(st.one_of(st.sampled_from(WEIRD), st.lists(st.sampled_from(WEIRD), max_size=2)))
def test_grid_sweep_run_types(value):
    for f, names in ((lambda: rg.grid(Config(), xi=value), ("xi",)),
                     (lambda: rg.sweep(value, progress=False), ("configs", "iterable")),
                     (lambda: rg.experiments.run(value), ("config",))):
        try:
            f()
        except ERRORS as exc:
            expect_error(exc, *names)


# -- the raw _core functions ------------------------------------------------------------------

def required_positional(f):
    """Required positional parameters of a _core function, read from the signature its
    docstring declares (__text_signature__)."""
    params = inspect.signature(f).parameters.values()
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params)


# derived from the method tables, so a new or changed entry point is fuzzed as it is
CORE_ARITY = {name: required_positional(f) for name, f in vars(_core).items()
              if isinstance(f, types.BuiltinFunctionType)}
CORE_POOL = WEIRD + [np.zeros((3, 3)), np.eye(3), np.full(3, 1 / 3), np.zeros((2, 5), np.int32),
                     np.zeros(0), MODEL.shape, (3, 5, 2, 4, 2, True), np.zeros(1, np.float32),
                     MODEL.params.copy(), np.zeros(10, np.uint8), huge(np.float64, (2**28, 2**28)),
                     "erank", (np.eye(3),), ((1, 2, 3, 4), (5, 6)),
                     dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_grad_norm=0.0,
                          mask_rate=0.2, mask_span=1)]


@given(st.sampled_from(sorted(CORE_ARITY)), st.data())
def test_core_functions_never_crash(name, data):
    """Arbitrary positional arguments: a result or a Python exception, never a crash."""
    n = CORE_ARITY[name] + data.draw(st.integers(-1, 1))
    args = [data.draw(st.sampled_from(CORE_POOL)) for _ in range(max(n, 0))]
    if name == "set_num_threads" and args and isinstance(args[0], int) and \
            not isinstance(args[0], bool) and 1 <= args[0] <= 64:
        return  # a valid call that would change global state
    try:
        getattr(_core, name)(*args)
    except (TypeError, ValueError, OverflowError, MemoryError, RuntimeError):
        pass
    assert np.isfinite(MODEL.params).all()
