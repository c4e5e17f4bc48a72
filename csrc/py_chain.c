/* Bindings of the chain kernels (chain.h) and of Philox (rng.h). */
#include "py_convert.h"

#include <math.h>

#include "chain.h"
#include "hmm.h"
#include "rng.h"
#include "status.h"

/* ---- converters: a validated chain -------------------------------------------------------- */

int rg_transition_conv(PyObject *obj, void *chain)
{
    rg_chain_arg *c = chain;
    if (!rg_float64_conv(obj, &c->T)) return 0;
    const int64_t V = PyArray_DIM(c->T.a, 0), n_cols = PyArray_DIM(c->T.a, 1);
    int64_t row = 0, col = 0;
    double value = 0.0;
    c->V = c->n_tokens = V;
    if (n_cols != V)
        rg_py_error(PyExc_ValueError, "transition must be square, got shape (%lld, %lld)",
                    (long long)V, (long long)n_cols);
    else if (V < 2 || V > RG_MAX_STATES)
        rg_py_error(PyExc_ValueError, "transition must have between 2 and %d states, got %lld",
                    RG_MAX_STATES, (long long)V);
    else if (rg_chain_validate(PyArray_DATA(c->T.a), V, c->tol, &row, &col, &value) == RG_OK)
        return 1;
    else if (col >= 0)
        rg_py_error(PyExc_ValueError, "transition[%lld, %lld] = %.17g is negative",
                    (long long)row, (long long)col, value);
    else
        rg_py_error(PyExc_ValueError, "transition row %lld sums to %.17g, not 1 (tolerance %g)",
                    (long long)row, value, c->tol);
    Py_CLEAR(c->T.a);
    return 0;
}

/* Index of the first negative entry of p (n), or -1; the sum in *sum. */
static int64_t first_negative(const double *p, int64_t n, double *sum)
{
    *sum = 0.0;
    for (int64_t j = 0; j < n; j++) {
        if (p[j] < 0.0) return j;
        *sum += p[j];
    }
    return -1;
}

int rg_stationary_conv(PyObject *obj, void *chain)
{
    rg_chain_arg *c = chain;
    if (!rg_float64_conv(obj, &c->pi)) return 0;
    const double *p = PyArray_DATA(c->pi.a);
    double sum;
    int64_t j;
    if (PyArray_DIM(c->pi.a, 0) != c->V)
        rg_py_error(PyExc_ValueError, "stationary must have length %lld (the number of states), "
                    "got %ld", (long long)c->V, (long)PyArray_DIM(c->pi.a, 0));
    else if ((j = first_negative(p, c->V, &sum)) >= 0)
        rg_py_error(PyExc_ValueError, "stationary[%lld] = %.17g is negative", (long long)j,
                    p[j]);
    else if (fabs(sum - 1.0) > 1e-9)
        rg_py_error(PyExc_ValueError, "stationary sums to %.17g, not 1", sum);
    else
        return 1;
    Py_CLEAR(c->pi.a);
    return 0;
}

int rg_emission_conv(PyObject *obj, void *chain)
{
    rg_chain_arg *c = chain;
    if (!rg_float64_conv(obj, &c->E)) return 0;
    if (!c->E.a) return 1; /* None: the chain's states are the tokens */
    const int64_t H = PyArray_DIM(c->E.a, 0), V = PyArray_DIM(c->E.a, 1);
    const double *E = PyArray_DATA(c->E.a);
    double sum = 0.0;
    int64_t h = 0, j = -1;
    if (H != c->V)
        rg_py_error(PyExc_ValueError, "emission must have %lld rows (the hidden states), got "
                    "%lld", (long long)c->V, (long long)H);
    else if (V < 2 || V > RG_MAX_STATES)
        rg_py_error(PyExc_ValueError, "emission must have between 2 and %d columns (tokens), "
                    "got %lld", RG_MAX_STATES, (long long)V);
    else {
        for (h = 0; h < H; h++)
            if ((j = first_negative(E + h * V, V, &sum)) >= 0 || fabs(sum - 1.0) > c->tol) break;
        if (h == H) {
            c->n_tokens = V;
            return 1;
        }
        if (j >= 0)
            rg_py_error(PyExc_ValueError, "emission[%lld, %lld] = %.17g is negative",
                        (long long)h, (long long)j, E[h * V + j]);
        else
            rg_py_error(PyExc_ValueError, "emission row %lld sums to %.17g, not 1 (tolerance "
                        "%g)", (long long)h, sum, c->tol);
    }
    Py_CLEAR(c->E.a);
    return 0;
}

void rg_chain_arg_clear(rg_chain_arg *c)
{
    Py_CLEAR(c->T.a);
    Py_CLEAR(c->pi.a);
    Py_CLEAR(c->E.a);
}

uint64_t *rg_py_source(const rg_chain_arg *c, rg_source *src)
{
    const int64_t H = c->V, V = c->n_tokens, n_emit = c->E.a ? H * V : 0;
    uint64_t *thr = PyMem_Malloc(sizeof(uint64_t) * (size_t)((H + 1) * H + n_emit));
    if (!thr) return (uint64_t *)PyErr_NoMemory();
    rg_sampler_thresholds(PyArray_DATA(c->T.a), PyArray_DATA(c->pi.a), H, thr);
    *src = (rg_source){thr, NULL, H, V};
    if (c->E.a) {
        src->emit = thr + (H + 1) * H;
        rg_emission_thresholds(PyArray_DATA(c->E.a), H, V, thr + (H + 1) * H);
    }
    return thr;
}

/* ---- converters: observed sequences ------------------------------------------------------- */

/* The arguments of chain_posterior and chain_bayes_nll: a chain (with its emission, for a
 * hidden Markov task), tokens and their mask.  true_tokens: chain_bayes_nll's tokens are the
 * true ones everywhere, so the mask id may appear nowhere. */
typedef struct {
    rg_chain_arg chain;
    rg_array tokens, mask;
    int64_t n, L;
    int true_tokens;
} observed;

static int observed_tokens_conv(PyObject *obj, void *arg)
{
    observed *o = arg;
    /* the mask id V passes here; observed_tokens_valid refuses it where it may not stand */
    const int64_t width = o->chain.V > o->chain.n_tokens ? o->chain.V : o->chain.n_tokens;
    o->tokens.hi = o->chain.n_tokens;
    if (!rg_int32_conv(obj, &o->tokens)) return 0;
    o->n = PyArray_DIM(o->tokens.a, 0);
    o->L = PyArray_DIM(o->tokens.a, 1);
    if (rg_py_check_nonempty(o->tokens.a, "tokens") < 0)
        return 0;
    else if (o->n > INT32_MAX || o->L * width > INT32_MAX)
        PyErr_SetString(PyExc_ValueError, "tokens is too large for the posterior kernel");
    else
        return 1;
    return 0;
}

/* The tokens' one range check (the kernels trust it): the conversion bounded them to [0, V];
 * the mask id V may stand only where the mask hides a token, and never among true tokens. */
static int observed_tokens_valid(const observed *o)
{
    const int32_t *x = PyArray_DATA(o->tokens.a);
    const npy_bool *hidden = PyArray_DATA(o->mask.a);
    const int64_t V = o->chain.n_tokens;
    for (int64_t k = 0; k < o->n * o->L; k++)
        if (x[k] == V && (o->true_tokens || !hidden[k])) {
            rg_py_error(PyExc_ValueError, "tokens[%lld, %lld] = %d is not a token in [0, %lld)",
                        (long long)(k / o->L), (long long)(k % o->L), x[k], (long long)V);
            return 0;
        }
    return 1;
}

static int observed_mask_conv(PyObject *obj, void *arg)
{
    observed *o = arg;
    if (!rg_bool_conv(obj, &o->mask)) return 0;
    if (PyArray_DIM(o->mask.a, 0) == o->n && PyArray_DIM(o->mask.a, 1) == o->L)
        return observed_tokens_valid(o);
    rg_py_error(PyExc_ValueError, "mask has shape (%ld, %ld) but tokens has shape (%lld, %lld)",
                (long)PyArray_DIM(o->mask.a, 0), (long)PyArray_DIM(o->mask.a, 1),
                (long long)o->n, (long long)o->L);
    return 0;
}

static int observed_parse(PyObject *args, const char *format, int true_tokens, observed *o)
{
    *o = (observed){RG_CHAIN_ARG, RG_ARRAY("tokens", 2, "of shape (n, length)"),
                    RG_ARRAY("mask", 2, "of shape (n, length)"), 0, 0, true_tokens};
    return PyArg_ParseTuple(args, format, rg_transition_conv, &o->chain, rg_stationary_conv,
                            &o->chain, rg_emission_conv, &o->chain, observed_tokens_conv, o,
                            observed_mask_conv, o);
}

static void observed_clear(observed *o)
{
    rg_chain_arg_clear(&o->chain);
    Py_CLEAR(o->tokens.a);
    Py_CLEAR(o->mask.a);
}

/* The exception of a posterior kernel's status at (seq, pos). */
static void observed_error(int status, int64_t seq, int64_t pos)
{
    if (status == RG_ERR_ZERO_PROB)
        rg_py_error(PyExc_ValueError, "the visible tokens of sequence %lld have probability "
                    "zero under the chain (first impossible at position %lld)", (long long)seq,
                    (long long)pos);
    else
        rg_py_status(status, "posterior");
}

/* ---- wrappers ----------------------------------------------------------------------------- */

static PyObject *py_chain_check(PyObject *self, PyObject *args)
{
    rg_chain_arg c = RG_CHAIN_ARG;
    PyObject *T_obj, *result = NULL;
    if (PyArg_ParseTuple(args, "Od:chain_check", &T_obj, &c.tol) &&
        rg_transition_conv(T_obj, &c)) {
        Py_INCREF(Py_None);
        result = Py_None;
    }
    rg_chain_arg_clear(&c);
    return result;
}

static PyObject *py_chain_stationary(PyObject *self, PyObject *args)
{
    rg_chain_arg c = RG_CHAIN_ARG;
    PyArrayObject *pi = NULL;
    int64_t n_closed = 0, example[2] = {0, 0};
    int status = RG_OK;
    if (!PyArg_ParseTuple(args, "O&:chain_stationary", rg_transition_conv, &c)) goto exit;
    if (!(pi = rg_py_empty(1, (npy_intp[]){c.V}, NPY_FLOAT64))) goto exit;
    Py_BEGIN_ALLOW_THREADS
    status = rg_chain_stationary(PyArray_DATA(c.T.a), c.V, PyArray_DATA(pi), &n_closed, example);
    Py_END_ALLOW_THREADS
    if (status == RG_ERR_REDUCIBLE)
        rg_py_error(PyExc_ValueError, "transition has %lld closed classes (states %lld and %lld "
                    "lie in different ones), so its stationary law is not unique",
                    (long long)n_closed, (long long)example[0], (long long)example[1]);
    else if (status != RG_OK)
        rg_py_status(status, "transition");
exit:
    rg_chain_arg_clear(&c);
    if (status != RG_OK) Py_CLEAR(pi);
    return (PyObject *)pi;
}

static PyObject *py_chain_eigenvalues(PyObject *self, PyObject *args)
{
    rg_chain_arg c = RG_CHAIN_ARG;
    PyArrayObject *ev = NULL;
    PyObject *result = NULL;
    double *re = NULL, tol;
    int64_t info = 0;
    int status = RG_OK, symmetric = 0;
    if (!PyArg_ParseTuple(args, "O&d:chain_eigenvalues", rg_transition_conv, &c, &tol))
        goto exit;
    ev = rg_py_empty(1, (npy_intp[]){c.V}, NPY_COMPLEX128);
    re = PyMem_Malloc(sizeof(double) * 2 * (size_t)c.V);
    if (!ev || !re) { if (!re) PyErr_NoMemory(); goto exit; }
    Py_BEGIN_ALLOW_THREADS
    status = rg_chain_eigenvalues(PyArray_DATA(c.T.a), c.V, tol, re, re + c.V, &symmetric,
                                  &info);
    Py_END_ALLOW_THREADS
    if (status == RG_ERR_LAPACK) {
        rg_py_error(PyExc_RuntimeError, "LAPACK %s failed (info = %lld)",
                    symmetric ? "dsyevd" : "dgeev", (long long)info);
        goto exit;
    }
    if (status != RG_OK) { rg_py_status(status, "transition"); goto exit; }
    double *z = PyArray_DATA(ev);
    for (int64_t j = 0; j < c.V; j++) { z[2 * j] = re[j]; z[2 * j + 1] = re[c.V + j]; }
    result = Py_BuildValue("(OO)", (PyObject *)ev, symmetric ? Py_True : Py_False);
exit:
    PyMem_Free(re);
    Py_XDECREF(ev);
    rg_chain_arg_clear(&c);
    return result;
}

/* Sizes of chain_sample's output; 0, or -1 with an exception. */
static int check_sample_size(int64_t n, int64_t L)
{
    char what[160];
    snprintf(what, sizeof what, "sample: n * length = %lld x %lld int32 tokens", (long long)n,
             (long long)L);
    return rg_py_check_product(n, L, 4, "n * length") < 0 ||
                   rg_py_check_memory((double)n * (double)L * 4.0, what) < 0
               ? -1 : 0;
}

static PyObject *py_chain_sample(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"transition", "stationary", "n", "length", "seed", "first",
                             "emission", "hidden_states", NULL};
    rg_chain_arg c = RG_CHAIN_ARG;
    rg_size n = RG_SIZE("n", 1, INT64_MAX), L = RG_SIZE("length", 1, INT64_MAX);
    rg_size first = RG_SIZE("first", 0, INT64_MAX);
    rg_source src;
    uint64_t seed, *thr = NULL;
    PyArrayObject *out[2] = {NULL, NULL};
    PyObject *result = NULL;
    int status = RG_OK, with_states = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&O&O&O&O&|O&O&p:chain_sample", kwlist,
                                     rg_transition_conv, &c, rg_stationary_conv, &c,
                                     rg_size_conv, &n, rg_size_conv, &L, rg_seed_conv, &seed,
                                     rg_size_conv, &first, rg_emission_conv, &c, &with_states) ||
        check_sample_size(n.v, L.v) < 0 ||
        (with_states && (check_sample_size(n.v, 2 * L.v) < 0)) ||
        !(thr = rg_py_source(&c, &src)))
        goto exit;
    if (with_states && !c.E.a) {
        PyErr_SetString(PyExc_ValueError, "hidden_states needs an emission matrix");
        goto exit;
    }
    for (int k = 0; k < 1 + with_states; k++)
        if (!(out[k] = rg_py_empty(2, (npy_intp[]){n.v, L.v}, NPY_INT32))) goto exit;
    Py_BEGIN_ALLOW_THREADS
    status = rg_source_sample(&src, seed, (uint64_t)first.v, n.v, L.v, PyArray_DATA(out[0]),
                              out[1] ? PyArray_DATA(out[1]) : NULL);
    Py_END_ALLOW_THREADS
    if (status != RG_OK)
        rg_py_status(status, "sample");
    else if (with_states)
        result = Py_BuildValue("OO", out[0], out[1]);
    else {
        result = (PyObject *)out[0];
        Py_INCREF(result);
    }
exit:
    PyMem_Free(thr);
    rg_chain_arg_clear(&c);
    for (int k = 0; k < 2; k++) Py_XDECREF(out[k]);
    return result;
}

/* mask_tokens' tokens (ids below mask_id) and its outputs (masked int32, mask bool). */
static int mask_arrays(PyObject *obj, rg_array *tok, int64_t mask_id, PyArrayObject *out[2])
{
    tok->hi = mask_id - 1;
    if (!rg_int32_conv(obj, tok) || rg_py_check_nonempty(tok->a, "tokens") < 0) return -1;
    const npy_intp n = PyArray_DIM(tok->a, 0), L = PyArray_DIM(tok->a, 1), dims[2] = {n, L};
    if (rg_py_check_memory((double)n * (double)L * 5.0, "tokens (masked copy and mask)") < 0)
        return -1;
    out[0] = rg_py_empty(2, dims, NPY_INT32);
    out[1] = rg_py_empty(2, dims, NPY_BOOL);
    return out[0] && out[1] ? 0 : -1;
}

static PyObject *py_mask_tokens(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tokens", "rate", "span", "seed", "mask_id", "first", NULL};
    rg_array tok = RG_ARRAY("tokens", 2, "of shape (n, length)");
    rg_real rate = RG_REAL("rate", 0.0, 1.0, 0, 0);
    rg_size span = RG_SIZE("span", 1, INT64_MAX), mask_id = RG_SIZE("mask_id", 1, RG_MAX_STATES);
    rg_size first = RG_SIZE("first", 0, INT64_MAX);
    PyObject *tok_obj, *result = NULL;
    PyArrayObject *out[2] = {NULL, NULL};
    uint64_t seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO&O&O&O&|O&:mask_tokens", kwlist, &tok_obj,
                                     rg_real_conv, &rate, rg_size_conv, &span, rg_seed_conv,
                                     &seed, rg_size_conv, &mask_id, rg_size_conv, &first) ||
        mask_arrays(tok_obj, &tok, mask_id.v, out) < 0)
        goto exit;
    Py_BEGIN_ALLOW_THREADS
    rg_mask_tokens(PyArray_DATA(tok.a), PyArray_DIM(tok.a, 0), PyArray_DIM(tok.a, 1), rate.v,
                   span.v, seed, (uint64_t)first.v, (int32_t)mask_id.v, PyArray_DATA(out[0]),
                   PyArray_DATA(out[1]));
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OO", out[0], out[1]);
exit:
    Py_XDECREF(tok.a);
    for (int i = 0; i < 2; i++) Py_XDECREF(out[i]);
    return result;
}

/* The posterior's output and workspace (checked against the memory available); -1 if not. */
static int posterior_buffers(const observed *o, PyArrayObject **out, double **work)
{
    const int64_t n = o->n, L = o->L, H = o->chain.V, V = o->chain.n_tokens;
    const int64_t n_work = o->chain.E.a ? rg_hmm_work_size(H, V, n, L) : 2 * n * V;
    char what[200];
    snprintf(what, sizeof what, "posterior of tokens: n * length * V = %lld x %lld x %lld "
             "float64", (long long)n, (long long)L, (long long)V);
    if (rg_py_check_product(n * L, V, 8, "n * length * V") < 0 ||
        rg_py_check_product(n * (L + 2), H, 8, "n * length * n_hidden") < 0 ||
        rg_py_check_memory(((double)n * L * V + (double)n_work) * 8.0, what) < 0)
        return -1;
    *out = rg_py_empty(3, (npy_intp[]){n, L, V}, NPY_FLOAT64);
    *work = PyMem_Malloc(sizeof(double) * (size_t)n_work);
    if (!*work && *out) PyErr_NoMemory();
    return *out && *work ? 0 : -1;
}

/* The posterior into out (with work) or, when out is NULL, the Bayes NLL into sum and count:
 * the chain's kernel, or the hidden-Markov one when o has an emission. */
static int observed_run(const observed *o, double *out, double *work, double *sum,
                        int64_t *count, int64_t *seq, int64_t *pos)
{
    const rg_chain_arg *c = &o->chain;
    const double *T = PyArray_DATA(c->T.a), *pi = PyArray_DATA(c->pi.a);
    const double *E = c->E.a ? PyArray_DATA(c->E.a) : NULL;
    const int32_t *tokens = PyArray_DATA(o->tokens.a);
    const uint8_t *mask = PyArray_DATA(o->mask.a);
    const int64_t H = c->V, V = c->n_tokens, n = o->n, L = o->L;
    if (out)
        return E ? rg_hmm_posterior(T, pi, E, H, V, tokens, mask, n, L, out, work, seq, pos)
                 : rg_chain_posterior(T, pi, H, tokens, mask, n, L, out, work, seq, pos);
    return E ? rg_hmm_bayes_nll(T, pi, E, H, V, tokens, mask, n, L, sum, count, seq, pos)
             : rg_chain_bayes_nll(T, pi, H, tokens, mask, n, L, sum, count, seq, pos);
}

static PyObject *py_chain_posterior(PyObject *self, PyObject *args)
{
    observed o;
    PyArrayObject *out = NULL;
    double *work = NULL;
    int64_t seq = 0, pos = 0;
    int status = RG_OK;
    if (!observed_parse(args, "O&O&O&O&O&:chain_posterior", 0, &o) ||
        posterior_buffers(&o, &out, &work) < 0) {
        Py_CLEAR(out);
        goto exit;
    }
    Py_BEGIN_ALLOW_THREADS
    status = observed_run(&o, PyArray_DATA(out), work, NULL, NULL, &seq, &pos);
    Py_END_ALLOW_THREADS
    if (status != RG_OK) {
        observed_error(status, seq, pos);
        Py_CLEAR(out);
    }
exit:
    PyMem_Free(work);
    observed_clear(&o);
    return (PyObject *)out;
}

static PyObject *py_chain_bayes_nll(PyObject *self, PyObject *args)
{
    observed o;
    PyObject *result = NULL;
    int64_t seq = 0, pos = 0, count = 0;
    double sum = 0.0;
    int status = RG_OK;
    if (!observed_parse(args, "O&O&O&O&O&:chain_bayes_nll", 1, &o)) goto exit;
    Py_BEGIN_ALLOW_THREADS
    status = observed_run(&o, NULL, NULL, &sum, &count, &seq, &pos);
    Py_END_ALLOW_THREADS
    if (status != RG_OK)
        observed_error(status, seq, pos);
    else
        result = Py_BuildValue("dL", sum, (long long)count);
exit:
    observed_clear(&o);
    return result;
}

static PyObject *py_philox(PyObject *self, PyObject *args)
{
    unsigned int c0, c1, c2, c3, k0, k1;
    if (!PyArg_ParseTuple(args, "(IIII)(II):philox4x32_10", &c0, &c1, &c2, &c3, &k0, &k1))
        return NULL;
    uint32_t ctr[4] = {c0, c1, c2, c3}, key[2] = {k0, k1}, out[4];
    rg_philox4x32_10(ctr, key, out);
    return Py_BuildValue("(kkkk)", (unsigned long)out[0], (unsigned long)out[1],
                         (unsigned long)out[2], (unsigned long)out[3]);
}

PyMethodDef rg_chain_methods[] = {
    {"chain_check", py_chain_check, METH_VARARGS,
     "chain_check($module, transition, tol, /)\n--\n\n"
     "Raise ValueError unless transition is row-stochastic within tol."},
    {"chain_stationary", py_chain_stationary, METH_VARARGS,
     "chain_stationary($module, transition, /)\n--\n\n"
     "(V,) float64 stationary law (GTH)."},
    {"chain_eigenvalues", py_chain_eigenvalues, METH_VARARGS,
     "chain_eigenvalues($module, transition, tol, /)\n--\n\n"
     "((V,) complex128 eigenvalues unsorted, reversible): LAPACK dsyevd if detailed balance "
     "holds within tol, else dgeev."},
    {"chain_sample", RG_KW(py_chain_sample),
     "chain_sample($module, /, transition, stationary, n, length, seed, first=0, "
     "emission=None, hidden_states=False)\n--\n\n"
     "(n, length) int32 sequences first .. first + n - 1 of the seed's stream; with an "
     "emission (n_hidden, n_states), tokens emitted by the chain's states ((tokens, states) "
     "if hidden_states)."},
    {"mask_tokens", RG_KW(py_mask_tokens),
     "mask_tokens($module, /, tokens, rate, span, seed, mask_id, first=0)\n--\n\n"
     "(masked int32, mask bool), each (n, length)."},
    {"chain_posterior", py_chain_posterior, METH_VARARGS,
     "chain_posterior($module, transition, stationary, emission, tokens, mask, /)\n--\n\n"
     "(n, length, V) float64 exact posterior of every position (emission None: the chain's "
     "states are the tokens)."},
    {"chain_bayes_nll", py_chain_bayes_nll, METH_VARARGS,
     "chain_bayes_nll($module, transition, stationary, emission, tokens, mask, /)\n--\n\n"
     "(sum of -log posterior of the true tokens at masked positions, their count)."},
    {"philox4x32_10", py_philox, METH_VARARGS,
     "philox4x32_10($module, counter, key, /)\n--\n\n"
     "The 4 words of Philox4x32-10 for a 4-word counter and a 2-word key (known-answer "
     "tests)."},
    {NULL, NULL, 0, NULL}};
