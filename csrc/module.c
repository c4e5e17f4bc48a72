/* rgflow._core: the one file that sees Python.h.
 *
 * Every entry point parses its arguments, validates dtype / ndim / shape / values, converts to
 * C-contiguous arrays (copying only when needed, never casting lossily), releases the GIL
 * around the kernel and turns kernel status codes into exceptions naming the argument.
 * References are released at one `exit:` label per function. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_23_API_VERSION
#define NPY_TARGET_VERSION NPY_1_23_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "blas.h"
#include "chain.h"
#include "cka.h"
#include "rank.h"
#include "memory.h"
#include "mlp.h"
#include "pool.h"
#include "train.h"
#include "status.h"

/* ------------------------------------------------------------------------------------------ */
/* Argument converters                                                                         */

/* PyErr_Format knows no floating-point conversions: format with vsnprintf instead. */
static void rg_error(PyObject *type, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    PyErr_SetString(type, buf);
}

/* ------------------------------------------------------------------------------------------ */
/* Memory bounds                                                                               */

/* rgflow.MemoryLimitError (a MemoryError): a request larger than the memory available now. */
static PyObject *MemoryLimitError;

/* 0 if `bytes` (a double, so products of sizes cannot overflow) fit in available memory;
 * else -1 with MemoryLimitError "<what> needs ... GB". The one check used before every large
 * allocation, in C and (through _core.check_memory) in Python. */
static int check_memory(double bytes, const char *what)
{
    double avail;
    if (rg_memory_fits(bytes, &avail)) return 0;
    char msg[400];
    snprintf(msg, sizeof msg, "%s needs %.3g GB but only %.3g GB of memory is available",
             what, bytes / 1e9, avail / 1e9);
    PyErr_SetString(MemoryLimitError, msg);
    return -1;
}

/* Bytes of a C-contiguous copy of `a` as `itemsize`-byte elements, or 0 if none is needed. */
static double copy_bytes(PyArrayObject *a, int type, double itemsize)
{
    if (PyArray_TYPE(a) == type && PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISALIGNED(a) &&
        PyArray_ISNOTSWAPPED(a))
        return 0.0;
    return (double)PyArray_SIZE(a) * itemsize;
}

static int check_copy(PyArrayObject *a, int type, double itemsize, const char *name)
{
    char what[200];
    snprintf(what, sizeof what, "%s (converted to a contiguous array of %.0f elements)", name,
             (double)PyArray_SIZE(a));
    return check_memory(copy_bytes(a, type, itemsize), what);
}

/* "float64 array of shape (3, 4)" for error messages. */
static void describe(PyArrayObject *a, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s array of shape (", PyArray_DESCR(a)->typeobj->tp_name);
    for (int d = 0; d < PyArray_NDIM(a) && n > 0 && (size_t)n < size; d++)
        n += snprintf(buf + n, size - (size_t)n, d ? ", %ld" : "%ld", (long)PyArray_DIM(a, d));
    if (n > 0 && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n, PyArray_NDIM(a) == 1 ? ",)" : ")");
}

static PyArrayObject *as_any_array(PyObject *obj, const char *name)
{
    if (obj == Py_None) {
        rg_error(PyExc_TypeError, "%s must be an array, got None", name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, NPY_NOTYPE, 0, 0, 0);
    if (!a && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        rg_error(PyExc_TypeError, "%s must be array-like", name);
    }
    return a;
}

static int check_ndim(PyArrayObject *a, const char *name, int ndim, const char *what)
{
    if (PyArray_NDIM(a) == ndim) return 0;
    char buf[160];
    describe(a, buf, sizeof buf);
    rg_error(PyExc_ValueError, "%s must be a %d-D array %s, got a %s", name, ndim, what, buf);
    return -1;
}

/* A float array converted losslessly to float64 (float16/32/64 and integers are accepted;
 * complex, bool and object are not), C-contiguous, all finite. */
static PyArrayObject *float64_array(PyObject *obj, const char *name, int ndim, const char *what)
{
    PyArrayObject *a = as_any_array(obj, name), *out = NULL;
    if (!a) return NULL;
    int type = PyArray_TYPE(a);
    if (!(PyArray_ISFLOAT(a) || PyArray_ISINTEGER(a)) || type == NPY_LONGDOUBLE) {
        char buf[160];
        describe(a, buf, sizeof buf);
        rg_error(PyExc_TypeError, "%s must be a real floating-point array, got a %s", name,
                     buf);
        goto exit;
    }
    if (check_ndim(a, name, ndim, what) < 0) goto exit;
    if (check_copy(a, NPY_FLOAT64, 8.0, name) < 0) goto exit;
    out = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, NPY_FLOAT64, 0, 0,
                                           NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!out) goto exit;
    const double *x = PyArray_DATA(out);
    npy_intp size = PyArray_SIZE(out);
    for (npy_intp k = 0; k < size; k++)
        if (!isfinite(x[k])) {
            rg_error(PyExc_ValueError, "%s contains a non-finite value (%s) at flat index %zd",
                         name, isnan(x[k]) ? "nan" : x[k] > 0 ? "inf" : "-inf", k);
            Py_CLEAR(out);
            goto exit;
        }
exit:
    Py_DECREF(a);
    return out;
}

/* ValueError for the value at flat index k of an integer array outside [lo, hi] (%.0f prints
 * every integer exactly up to 2^53 and the magnitude beyond, enough to name the culprit). */
static void outside_error(const char *name, double value, npy_intp k, int64_t lo, int64_t hi)
{
    rg_error(PyExc_ValueError, "%s has a value %.0f at flat index %zd outside [%lld, %lld]",
             name, value, k, (long long)lo, (long long)hi);
}

/* An integer array converted to int32 after checking every value lies in [lo, hi]. */
static PyArrayObject *int32_array(PyObject *obj, const char *name, int ndim, const char *what,
                                  int64_t lo, int64_t hi)
{
    PyArrayObject *a = as_any_array(obj, name), *wide = NULL, *out = NULL;
    if (!a) return NULL;
    if (!PyArray_ISINTEGER(a)) {
        char buf[160];
        describe(a, buf, sizeof buf);
        rg_error(PyExc_TypeError, "%s must be an integer array, got a %s", name, buf);
        goto exit;
    }
    if (check_ndim(a, name, ndim, what) < 0) goto exit;
    if (PyArray_TYPE(a) == NPY_INT32) {
        /* the common case: check in place of a contiguous copy, no int64 detour */
        if (check_copy(a, NPY_INT32, 4.0, name) < 0) goto exit;
        out = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, NPY_INT32, 0, 0,
                                               NPY_ARRAY_IN_ARRAY);
        if (!out) goto exit;
        const int32_t *x = PyArray_DATA(out);
        for (npy_intp k = 0; k < PyArray_SIZE(out); k++)
            if (x[k] < lo || x[k] > hi) {
                outside_error(name, x[k], k, lo, hi);
                Py_CLEAR(out);
                goto exit;
            }
        goto exit;
    }
    /* other integer types go through int64 (and, for 64-bit unsigned ones, uint64) */
    if (check_memory((double)PyArray_SIZE(a) * 20.0, name) < 0) goto exit;
    if (PyArray_TYPE(a) == NPY_UINT64 || PyArray_TYPE(a) == NPY_ULONGLONG ||
        (PyArray_TYPE(a) == NPY_ULONG && sizeof(long) == 8)) {
        /* values >= 2^63 would wrap in int64: check against hi first in unsigned space */
        PyArrayObject *u = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, NPY_UINT64, 0, 0,
                                                            NPY_ARRAY_IN_ARRAY);
        if (!u) goto exit;
        const uint64_t *x = PyArray_DATA(u);
        for (npy_intp k = 0; k < PyArray_SIZE(u); k++)
            if (x[k] > (uint64_t)hi) {
                outside_error(name, (double)x[k], k, lo, hi);
                Py_DECREF(u);
                goto exit;
            }
        Py_DECREF(u);
    }
    wide = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, NPY_INT64, 0, 0,
                                            NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (!wide) goto exit;
    const int64_t *x = PyArray_DATA(wide);
    for (npy_intp k = 0; k < PyArray_SIZE(wide); k++)
        if (x[k] < lo || x[k] > hi) {
            outside_error(name, (double)x[k], k, lo, hi);
            goto exit;
        }
    out = (PyArrayObject *)PyArray_FROMANY((PyObject *)wide, NPY_INT32, 0, 0,
                                           NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
exit:
    Py_DECREF(a);
    Py_XDECREF(wide);
    return out;
}

/* A boolean array, C-contiguous (one byte per element, 0 or 1). */
static PyArrayObject *bool_array(PyObject *obj, const char *name, int ndim, const char *what)
{
    PyArrayObject *a = as_any_array(obj, name), *out = NULL;
    if (!a) return NULL;
    if (PyArray_TYPE(a) != NPY_BOOL) {
        char buf[160];
        describe(a, buf, sizeof buf);
        rg_error(PyExc_TypeError, "%s must be a boolean array, got a %s", name, buf);
        goto exit;
    }
    if (check_ndim(a, name, ndim, what) < 0) goto exit;
    if (check_copy(a, NPY_BOOL, 1.0, name) < 0) goto exit;
    out = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, NPY_BOOL, 0, 0, NPY_ARRAY_IN_ARRAY);
exit:
    Py_DECREF(a);
    return out;
}

/* A positive size (n, length, ...), with a clear error for 0, negatives and non-integers. */
static int size_arg(PyObject *obj, void *out)
{
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        rg_error(PyExc_TypeError, "sizes must be integers, got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    PyObject *idx = PyNumber_Index(obj);
    if (!idx) return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(idx, &overflow);
    Py_DECREF(idx);
    if (v == -1 && PyErr_Occurred()) return 0;
    if (overflow > 0 || v > (long long)PY_SSIZE_T_MAX) v = PY_SSIZE_T_MAX;
    if (overflow < 0) v = -1;
    *(int64_t *)out = (int64_t)v;
    return 1;
}

/* seed: a non-negative integer below 2^64. */
static int seed_arg(PyObject *obj, void *out)
{
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        rg_error(PyExc_TypeError, "seed must be an int, got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "seed must be an integer in [0, 2**64)");
        return 0;
    }
    *(uint64_t *)out = (uint64_t)v;
    return 1;
}

static int check_positive(int64_t v, const char *name)
{
    if (v > 0) return 0;
    rg_error(PyExc_ValueError, "%s must be positive, got %lld", name, (long long)v);
    return -1;
}

/* n * m * itemsize must fit in memory addressing; returns -1 with ValueError otherwise. */
static int check_product(int64_t n, int64_t m, int64_t itemsize, const char *what)
{
    if (n > 0 && m > 0 && n > (int64_t)(PY_SSIZE_T_MAX / itemsize) / m) {
        rg_error(PyExc_ValueError, "%s = %lld x %lld is too large", what, (long long)n,
                     (long long)m);
        return -1;
    }
    return 0;
}

static PyObject *raise_status(int status, const char *context)
{
    if (status == RG_ERR_NOMEM) return PyErr_NoMemory();
    rg_error(status == RG_ERR_LAPACK ? PyExc_RuntimeError : PyExc_ValueError, "%s: %s",
                 context, rg_strerror(status));
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Chains                                                                                      */

/* Square float64 transition matrix, validated as row-stochastic. */
static PyArrayObject *transition_arg(PyObject *obj, double tol)
{
    PyArrayObject *T = float64_array(obj, "transition", 2, "of shape (V, V)");
    if (!T) return NULL;
    int64_t V = PyArray_DIM(T, 0);
    if (PyArray_DIM(T, 1) != V) {
        rg_error(PyExc_ValueError, "transition must be square, got shape (%ld, %ld)",
                     (long)PyArray_DIM(T, 0), (long)PyArray_DIM(T, 1));
        goto fail;
    }
    if (V < 2 || V > RG_MAX_STATES) {
        rg_error(PyExc_ValueError, "transition must have between 2 and %d states, got %lld",
                     RG_MAX_STATES, (long long)V);
        goto fail;
    }
    int64_t row, col;
    double value;
    if (rg_chain_validate(PyArray_DATA(T), V, tol, &row, &col, &value) != RG_OK) {
        if (col >= 0)
            rg_error(PyExc_ValueError, "transition[%lld, %lld] = %.17g is negative",
                         (long long)row, (long long)col, value);
        else
            rg_error(PyExc_ValueError, "transition row %lld sums to %.17g, not 1 (tolerance "
                         "%g)", (long long)row, value, tol);
        goto fail;
    }
    return T;
fail:
    Py_DECREF(T);
    return NULL;
}

/* Stationary law matching transition (length V, non-negative, summing to 1). */
static PyArrayObject *stationary_arg(PyObject *obj, int64_t V)
{
    PyArrayObject *pi = float64_array(obj, "stationary", 1, "of shape (V,)");
    if (!pi) return NULL;
    if (PyArray_DIM(pi, 0) != V) {
        rg_error(PyExc_ValueError, "stationary must have length %lld (the number of states), "
                     "got %ld", (long long)V, (long)PyArray_DIM(pi, 0));
        goto fail;
    }
    const double *p = PyArray_DATA(pi);
    double sum = 0.0;
    for (int64_t j = 0; j < V; j++) {
        if (p[j] < 0.0) {
            rg_error(PyExc_ValueError, "stationary[%lld] = %.17g is negative", (long long)j,
                         p[j]);
            goto fail;
        }
        sum += p[j];
    }
    if (fabs(sum - 1.0) > 1e-9) {
        rg_error(PyExc_ValueError, "stationary sums to %.17g, not 1", sum);
        goto fail;
    }
    return pi;
fail:
    Py_DECREF(pi);
    return NULL;
}

static PyObject *py_chain_check(PyObject *self, PyObject *args)
{
    PyObject *T_obj;
    double tol;
    if (!PyArg_ParseTuple(args, "Od:chain_check", &T_obj, &tol)) return NULL;
    PyArrayObject *T = transition_arg(T_obj, tol);
    if (!T) return NULL;
    Py_DECREF(T);
    Py_RETURN_NONE;
}

static PyObject *py_chain_stationary(PyObject *self, PyObject *args)
{
    PyObject *T_obj, *result = NULL;
    if (!PyArg_ParseTuple(args, "O:chain_stationary", &T_obj)) return NULL;
    PyArrayObject *T = transition_arg(T_obj, 1e-9), *pi = NULL;
    if (!T) return NULL;
    int64_t V = PyArray_DIM(T, 0), n_closed = 0, example[2];
    npy_intp dims[1] = {V};
    pi = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT64);
    if (!pi) goto exit;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = rg_chain_stationary(PyArray_DATA(T), V, PyArray_DATA(pi), &n_closed, example);
    Py_END_ALLOW_THREADS
    if (status == RG_ERR_REDUCIBLE) {
        rg_error(PyExc_ValueError, "transition has %lld closed classes (states %lld and %lld "
                     "lie in different ones), so its stationary law is not unique",
                     (long long)n_closed, (long long)example[0], (long long)example[1]);
        goto exit;
    }
    if (status != RG_OK) { raise_status(status, "transition"); goto exit; }
    result = (PyObject *)pi;
    pi = NULL;
exit:
    Py_DECREF(T);
    Py_XDECREF(pi);
    return result;
}

static PyObject *py_chain_eigenvalues(PyObject *self, PyObject *args)
{
    PyObject *T_obj, *result = NULL;
    if (!PyArg_ParseTuple(args, "O:chain_eigenvalues", &T_obj)) return NULL;
    PyArrayObject *T = transition_arg(T_obj, 1e-9), *ev = NULL;
    if (!T) return NULL;
    int64_t V = PyArray_DIM(T, 0), info = 0;
    npy_intp dims[1] = {V};
    ev = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_COMPLEX128);
    double *re = PyMem_Malloc(sizeof(double) * 2 * (size_t)V);
    if (!ev || !re) { if (!re) PyErr_NoMemory(); goto exit; }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = rg_chain_eigenvalues(PyArray_DATA(T), V, re, re + V, &info);
    Py_END_ALLOW_THREADS
    if (status != RG_OK) {
        rg_error(PyExc_RuntimeError, "LAPACK dgeev failed (info = %lld)", (long long)info);
        goto exit;
    }
    double *z = PyArray_DATA(ev);
    for (int64_t j = 0; j < V; j++) { z[2 * j] = re[j]; z[2 * j + 1] = re[V + j]; }
    result = (PyObject *)ev;
    ev = NULL;
exit:
    PyMem_Free(re);
    Py_DECREF(T);
    Py_XDECREF(ev);
    return result;
}

static PyObject *py_chain_sample(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"transition", "stationary", "n", "length", "seed", "first", NULL};
    PyObject *T_obj, *pi_obj, *result = NULL;
    int64_t n, L, first = 0;
    uint64_t seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO&O&O&|O&:chain_sample", kwlist, &T_obj,
                                     &pi_obj, size_arg, &n, size_arg, &L, seed_arg, &seed,
                                     size_arg, &first))
        return NULL;
    if (check_positive(n, "n") < 0 || check_positive(L, "length") < 0) return NULL;
    if (first < 0) { PyErr_SetString(PyExc_ValueError, "first must be >= 0"); return NULL; }
    if (check_product(n, L, 4, "n * length") < 0) return NULL;
    char what[160];
    snprintf(what, sizeof what, "sample: n * length = %lld x %lld int32 tokens", (long long)n,
             (long long)L);
    if (check_memory((double)n * (double)L * 4.0, what) < 0) return NULL;
    PyArrayObject *T = transition_arg(T_obj, 1e-9), *pi = NULL, *out = NULL;
    uint64_t *thr = NULL;
    if (!T) return NULL;
    int64_t V = PyArray_DIM(T, 0);
    if (!(pi = stationary_arg(pi_obj, V))) goto exit;
    npy_intp dims[2] = {n, L};
    out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_INT32);
    thr = PyMem_Malloc(sizeof(uint64_t) * (size_t)((V + 1) * V));
    if (!out || !thr) { if (!thr) PyErr_NoMemory(); goto exit; }
    int status;
    Py_BEGIN_ALLOW_THREADS
    rg_sampler_thresholds(PyArray_DATA(T), PyArray_DATA(pi), V, thr);
    status = rg_chain_sample(thr, V, seed, (uint64_t)first, n, L, PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (status != RG_OK) { raise_status(status, "sample"); goto exit; }
    result = (PyObject *)out;
    out = NULL;
exit:
    PyMem_Free(thr);
    Py_DECREF(T);
    Py_XDECREF(pi);
    Py_XDECREF(out);
    return result;
}

static PyObject *py_mask_tokens(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tokens", "rate", "span", "seed", "mask_id", "first", NULL};
    PyObject *tok_obj, *result = NULL;
    double rate;
    int64_t span, mask_id, first = 0;
    uint64_t seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OdO&O&O&|O&:mask_tokens", kwlist, &tok_obj,
                                     &rate, size_arg, &span, seed_arg, &seed, size_arg, &mask_id,
                                     size_arg, &first))
        return NULL;
    if (!(rate >= 0.0 && rate <= 1.0)) {
        rg_error(PyExc_ValueError, "rate must lie in [0, 1], got %.17g", rate);
        return NULL;
    }
    if (check_positive(span, "span") < 0) return NULL;
    if (mask_id < 1 || mask_id > RG_MAX_STATES) {
        rg_error(PyExc_ValueError, "mask_id must lie in [1, %d], got %lld", RG_MAX_STATES,
                     (long long)mask_id);
        return NULL;
    }
    if (first < 0) { PyErr_SetString(PyExc_ValueError, "first must be >= 0"); return NULL; }
    PyArrayObject *tok = int32_array(tok_obj, "tokens", 2, "of shape (n, length)", 0,
                                     mask_id - 1);
    PyArrayObject *masked = NULL, *mask = NULL;
    if (!tok) return NULL;
    int64_t n = PyArray_DIM(tok, 0), L = PyArray_DIM(tok, 1);
    if (check_positive(n, "tokens.shape[0]") < 0 || check_positive(L, "tokens.shape[1]") < 0)
        goto exit;
    if (check_memory((double)n * (double)L * 5.0, "tokens (masked copy and mask)") < 0)
        goto exit;
    npy_intp dims[2] = {n, L};
    masked = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_INT32);
    mask = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_BOOL);
    if (!masked || !mask) goto exit;
    Py_BEGIN_ALLOW_THREADS
    rg_mask_tokens(PyArray_DATA(tok), n, L, rate, span, seed, (uint64_t)first, (int32_t)mask_id,
                   PyArray_DATA(masked), PyArray_DATA(mask));
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("NN", masked, mask);
    masked = mask = NULL;
exit:
    Py_DECREF(tok);
    Py_XDECREF(masked);
    Py_XDECREF(mask);
    return result;
}

/* Shared argument handling of posterior and bayes_nll. */
typedef struct {
    PyArrayObject *T, *pi, *tokens, *mask;
    int64_t V, n, L;
} chain_obs;

static void chain_obs_clear(chain_obs *c)
{
    Py_XDECREF(c->T); Py_XDECREF(c->pi); Py_XDECREF(c->tokens); Py_XDECREF(c->mask);
}

static int chain_obs_parse(chain_obs *c, PyObject *T_obj, PyObject *pi_obj, PyObject *tok_obj,
                           PyObject *mask_obj)
{
    memset(c, 0, sizeof *c);
    if (!(c->T = transition_arg(T_obj, 1e-9))) return -1;
    c->V = PyArray_DIM(c->T, 0);
    if (!(c->pi = stationary_arg(pi_obj, c->V))) return -1;
    /* masked positions may hold the mask id V; visible ones are checked to be < V by the kernel */
    if (!(c->tokens = int32_array(tok_obj, "tokens", 2, "of shape (n, length)", 0, c->V)))
        return -1;
    if (!(c->mask = bool_array(mask_obj, "mask", 2, "of shape (n, length)"))) return -1;
    c->n = PyArray_DIM(c->tokens, 0);
    c->L = PyArray_DIM(c->tokens, 1);
    if (PyArray_DIM(c->mask, 0) != c->n || PyArray_DIM(c->mask, 1) != c->L) {
        rg_error(PyExc_ValueError, "mask has shape (%ld, %ld) but tokens has shape (%lld, "
                     "%lld)", (long)PyArray_DIM(c->mask, 0), (long)PyArray_DIM(c->mask, 1),
                     (long long)c->n, (long long)c->L);
        return -1;
    }
    if (check_positive(c->n, "tokens.shape[0]") < 0 ||
        check_positive(c->L, "tokens.shape[1]") < 0)
        return -1;
    if (c->n > INT32_MAX || c->L * c->V > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "tokens is too large for the posterior kernel");
        return -1;
    }
    return 0;
}

static PyObject *obs_error(int status, int64_t seq, int64_t pos, const chain_obs *c)
{
    if (status == RG_ERR_VALUE)
        rg_error(PyExc_ValueError, "tokens[%lld, %lld] = %d is not a state in [0, %lld)",
                     (long long)seq, (long long)pos,
                     ((int32_t *)PyArray_DATA(c->tokens))[seq * c->L + pos], (long long)c->V);
    else if (status == RG_ERR_ZERO_PROB)
        rg_error(PyExc_ValueError, "the visible tokens of sequence %lld have probability zero "
                     "under the chain (first impossible at position %lld)", (long long)seq,
                     (long long)pos);
    else
        raise_status(status, "posterior");
    return NULL;
}

static PyObject *py_chain_posterior(PyObject *self, PyObject *args)
{
    PyObject *T_obj, *pi_obj, *tok_obj, *mask_obj, *result = NULL;
    if (!PyArg_ParseTuple(args, "OOOO:chain_posterior", &T_obj, &pi_obj, &tok_obj, &mask_obj))
        return NULL;
    chain_obs c;
    PyArrayObject *out = NULL;
    double *work = NULL;
    if (chain_obs_parse(&c, T_obj, pi_obj, tok_obj, mask_obj) < 0) goto exit;
    if (check_product(c.n * c.L, c.V, 8, "n * length * V") < 0) goto exit;
    char what[200];
    snprintf(what, sizeof what, "posterior of tokens: n * length * V = %lld x %lld x %lld "
             "float64", (long long)c.n, (long long)c.L, (long long)c.V);
    if (check_memory(((double)c.n * c.L + 2.0 * c.n) * (double)c.V * 8.0, what) < 0) goto exit;
    npy_intp dims[3] = {c.n, c.L, c.V};
    out = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_FLOAT64);
    work = PyMem_Malloc(sizeof(double) * 2 * (size_t)(c.n * c.V));
    if (!out || !work) { if (!work) PyErr_NoMemory(); goto exit; }
    int status;
    int64_t seq = 0, pos = 0;
    Py_BEGIN_ALLOW_THREADS
    status = rg_chain_posterior(PyArray_DATA(c.T), PyArray_DATA(c.pi), c.V,
                                PyArray_DATA(c.tokens), PyArray_DATA(c.mask), c.n, c.L,
                                PyArray_DATA(out), work, &seq, &pos);
    Py_END_ALLOW_THREADS
    if (status != RG_OK) { obs_error(status, seq, pos, &c); goto exit; }
    result = (PyObject *)out;
    out = NULL;
exit:
    PyMem_Free(work);
    chain_obs_clear(&c);
    Py_XDECREF(out);
    return result;
}

static PyObject *py_chain_bayes_nll(PyObject *self, PyObject *args)
{
    PyObject *T_obj, *pi_obj, *tok_obj, *mask_obj;
    if (!PyArg_ParseTuple(args, "OOOO:chain_bayes_nll", &T_obj, &pi_obj, &tok_obj, &mask_obj))
        return NULL;
    chain_obs c;
    PyObject *result = NULL;
    if (chain_obs_parse(&c, T_obj, pi_obj, tok_obj, mask_obj) < 0) goto exit;
    int status;
    int64_t seq = 0, pos = 0, count = 0;
    double sum = 0.0;
    Py_BEGIN_ALLOW_THREADS
    status = rg_chain_bayes_nll(PyArray_DATA(c.T), PyArray_DATA(c.pi), c.V,
                                PyArray_DATA(c.tokens), PyArray_DATA(c.mask), c.n, c.L, &sum,
                                &count, &seq, &pos);
    Py_END_ALLOW_THREADS
    if (status != RG_OK) { obs_error(status, seq, pos, &c); goto exit; }
    result = Py_BuildValue("dL", sum, (long long)count);
exit:
    chain_obs_clear(&c);
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* Build information                                                                           */

/* Threads of rgflow's pool for the model kernels (set from Python at import; results do not
 * depend on it).  OpenBLAS itself always runs single-threaded (see pool.h). */
static int compute_threads = 1;

static PyObject *py_blas_info(PyObject *self, PyObject *noargs)
{
    return Py_BuildValue("sssi", RG_BLAS_PROVIDER, RG_BLAS(openblas_get_config)(),
                         RG_BLAS(openblas_get_corename)(), compute_threads);
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > RG_POOL_MAX) {
        rg_error(PyExc_ValueError, "n_threads must lie in [1, %d], got %ld", RG_POOL_MAX, n);
        return NULL;
    }
    int before = compute_threads;
    compute_threads = (int)n;
    return PyLong_FromLong(before);
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

/* ---- MLP bindings (begin) ---- */
/* The model is Python-owned: float32 arenas (params, grads, AdamW m and v) and a uint8
 * workspace, passed to stateless kernels together with the config tuple
 * (V, L, d, m, K, block_ln). */

static int mlp_config_arg(PyObject *obj, rg_mlp_config *c, int64_t *n_params)
{
    long long V, L, d, m, K;
    int block_ln;
    if (!PyTuple_Check(obj) ||
        !PyArg_ParseTuple(obj, "LLLLLp;config must be (V, L, d, m, K, block_ln)", &V, &L, &d,
                          &m, &K, &block_ln)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "config must be a tuple (V, L, d, m, K, block_ln)");
        return -1;
    }
    c->V = V; c->L = L; c->d = d; c->m = m; c->K = K; c->block_ln = block_ln;
    if (V < 2 || V > RG_MAX_STATES) {
        rg_error(PyExc_ValueError, "n_states must lie in [2, %d], got %lld", RG_MAX_STATES, V);
        return -1;
    }
    if (check_positive(L, "length") < 0 || check_positive(d, "width") < 0 ||
        check_positive(m, "hidden") < 0)
        return -1;
    if (K < 0) {
        rg_error(PyExc_ValueError, "depth must be >= 0, got %lld", K);
        return -1;
    }
    if (rg_mlp_check_config(c, n_params) != RG_OK) {
        rg_error(PyExc_ValueError, "model too large: length * width = %lld x %lld, hidden = "
                 "%lld, depth = %lld overflow the parameter arena", L, d, m, K);
        return -1;
    }
    return 0;
}

/* A float32 1-D C-contiguous array of exactly n elements, writeable if asked; never copied
 * (the kernels update it in place). Returns a borrowed pointer to its data or NULL. */
static float *mlp_arena_arg(PyObject *obj, const char *name, int64_t n, int write)
{
    if (!PyArray_Check(obj)) {
        rg_error(PyExc_TypeError, "%s must be a numpy.ndarray, got %s", name,
                 Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    char buf[160];
    describe(a, buf, sizeof buf);
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        rg_error(PyExc_TypeError, "%s must be a float32 array, got a %s", name, buf);
        return NULL;
    }
    if (PyArray_NDIM(a) != 1 || PyArray_DIM(a, 0) != n || !PyArray_IS_C_CONTIGUOUS(a) ||
        !PyArray_ISALIGNED(a)) {
        rg_error(PyExc_ValueError, "%s must be a C-contiguous aligned 1-D array of %lld "
                 "elements, got a %s", name, (long long)n, buf);
        return NULL;
    }
    if (write && !PyArray_ISWRITEABLE(a)) {
        rg_error(PyExc_ValueError, "%s must be writeable", name);
        return NULL;
    }
    return PyArray_DATA(a);
}

/* The uint8 workspace, large enough for batches of `batch` sequences. */
static void *mlp_workspace_arg(PyObject *obj, const rg_mlp_config *c, int64_t batch)
{
    int64_t need = rg_mlp_workspace_bytes(c, batch);
    if (batch > RG_MLP_MAX_DIM / c->L) { /* B * L rows go to sgemm as a 32-bit int */
        rg_error(PyExc_ValueError, "batch * length = %lld x %lld exceeds 2**31 - 1",
                 (long long)batch, (long long)c->L);
        return NULL;
    }
    if (need < 0) {
        rg_error(PyExc_ValueError, "workspace for batch %lld overflows", (long long)batch);
        return NULL;
    }
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_UINT8) {
        PyErr_SetString(PyExc_TypeError, "workspace must be a uint8 numpy.ndarray");
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_NDIM(a) != 1 || !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISWRITEABLE(a) ||
        PyArray_DIM(a, 0) < need) {
        rg_error(PyExc_ValueError, "workspace must be a writeable C-contiguous 1-D array of "
                 "at least %lld bytes for batch %lld", (long long)need, (long long)batch);
        return NULL;
    }
    return PyArray_DATA(a);
}

static PyObject *py_mlp_layout(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj, *tensors;
    rg_mlp_config c;
    int64_t n_params;
    if (!PyArg_ParseTuple(args, "O:mlp_layout", &cfg_obj)) return NULL;
    if (mlp_config_arg(cfg_obj, &c, &n_params) < 0) return NULL;
    int64_t nt = rg_mlp_n_tensors(&c);
    if (!(tensors = PyTuple_New((Py_ssize_t)nt))) return NULL;
    for (int64_t i = 0; i < nt; i++) {
        rg_mlp_tensor t;
        rg_mlp_tensor_at(&c, i, &t);
        PyObject *shape = t.ndim == 1 ? Py_BuildValue("(L)", (long long)t.shape[0])
                                      : Py_BuildValue("(LL)", (long long)t.shape[0],
                                                      (long long)t.shape[1]);
        PyObject *row = shape ? Py_BuildValue("sNLL", t.name, shape, (long long)t.offset,
                                              (long long)t.size) : NULL;
        if (!row) { Py_DECREF(tensors); return NULL; }
        PyTuple_SET_ITEM(tensors, (Py_ssize_t)i, row);
    }
    return Py_BuildValue("LN", (long long)n_params, tensors);
}

static PyObject *py_mlp_workspace_bytes(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj;
    rg_mlp_config c;
    int64_t n_params, batch;
    if (!PyArg_ParseTuple(args, "OO&:mlp_workspace_bytes", &cfg_obj, size_arg, &batch))
        return NULL;
    if (mlp_config_arg(cfg_obj, &c, &n_params) < 0 || check_positive(batch, "batch") < 0)
        return NULL;
    int64_t bytes = rg_mlp_workspace_bytes(&c, batch);
    if (bytes < 0 || bytes > (int64_t)PY_SSIZE_T_MAX) {
        rg_error(PyExc_ValueError, "workspace for batch %lld is too large", (long long)batch);
        return NULL;
    }
    return PyLong_FromLongLong((long long)bytes);
}

static PyObject *py_mlp_init(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj, *p_obj;
    rg_mlp_config c;
    int64_t n_params;
    uint64_t seed;
    if (!PyArg_ParseTuple(args, "OOO&:mlp_init", &cfg_obj, &p_obj, seed_arg, &seed))
        return NULL;
    if (mlp_config_arg(cfg_obj, &c, &n_params) < 0) return NULL;
    float *p = mlp_arena_arg(p_obj, "params", n_params, 1);
    if (!p) return NULL;
    Py_BEGIN_ALLOW_THREADS
    rg_mlp_init(&c, p, seed);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* tokens (n, L) int32 in [lo, hi], copied only if needed; NULL if obj is None and optional. */
static PyArrayObject *mlp_tokens_arg(PyObject *obj, const char *name, const rg_mlp_config *c,
                                     int64_t hi, int64_t n)
{
    if (PyArray_Check(obj) && PyArray_NDIM((PyArrayObject *)obj) == 2 &&
        PyArray_DIM((PyArrayObject *)obj, 1) != c->L) {
        /* before int32_array copies it: a wrong shape must not cost a conversion */
        rg_error(PyExc_ValueError, "%s must have shape (n, %lld), got (%ld, %ld)", name,
                 (long long)c->L, (long)PyArray_DIM((PyArrayObject *)obj, 0),
                 (long)PyArray_DIM((PyArrayObject *)obj, 1));
        return NULL;
    }
    PyArrayObject *t = int32_array(obj, name, 2, "of shape (n, length)", 0, hi);
    if (!t) return NULL;
    if (PyArray_DIM(t, 1) != c->L || (n >= 0 && PyArray_DIM(t, 0) != n) ||
        PyArray_DIM(t, 0) < 1) {
        rg_error(PyExc_ValueError, "%s must have shape (%s, %lld), got (%ld, %ld)", name,
                 n >= 0 ? "n" : "n >= 1", (long long)c->L, (long)PyArray_DIM(t, 0),
                 (long)PyArray_DIM(t, 1));
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

static PyArrayObject *mlp_mask_arg(PyObject *obj, int64_t n, int64_t L)
{
    PyArrayObject *mk = bool_array(obj, "mask", 2, "of shape (n, length)");
    if (!mk) return NULL;
    if (PyArray_DIM(mk, 0) != n || PyArray_DIM(mk, 1) != L) {
        rg_error(PyExc_ValueError, "mask must have shape (%lld, %lld), got (%ld, %ld)",
                 (long long)n, (long long)L, (long)PyArray_DIM(mk, 0), (long)PyArray_DIM(mk, 1));
        Py_DECREF(mk);
        return NULL;
    }
    return mk;
}

/* mlp_forward(config, params, workspace, batch, tokens, want_logits, want_stream,
 *             targets=None, mask=None) -> (logits | None, stream | None, nll_sum, count)
 * Processes tokens (n, L) in chunks of `batch` rows (the workspace's capacity). */
static PyObject *py_mlp_forward(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj, *p_obj, *ws_obj, *tok_obj, *tgt_obj = Py_None, *mask_obj = Py_None;
    PyObject *result = NULL;
    int want_logits, want_stream;
    int64_t batch, n_params;
    rg_mlp_config c;
    if (!PyArg_ParseTuple(args, "OOOO&Opp|OO:mlp_forward", &cfg_obj, &p_obj, &ws_obj, size_arg,
                          &batch, &tok_obj, &want_logits, &want_stream, &tgt_obj, &mask_obj))
        return NULL;
    if (mlp_config_arg(cfg_obj, &c, &n_params) < 0 || check_positive(batch, "batch") < 0)
        return NULL;
    const float *p = mlp_arena_arg(p_obj, "params", n_params, 0);
    void *ws = p ? mlp_workspace_arg(ws_obj, &c, batch) : NULL;
    if (!ws) return NULL;
    PyArrayObject *tok = NULL, *tgt = NULL, *mk = NULL, *logits = NULL, *stream = NULL;
    if (!(tok = mlp_tokens_arg(tok_obj, "tokens", &c, c.V, -1))) goto exit;
    int64_t n = PyArray_DIM(tok, 0), L = c.L, D = c.L * c.d;
    if ((tgt_obj == Py_None) != (mask_obj == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "targets and mask must be given together");
        goto exit;
    }
    if (tgt_obj != Py_None) {
        if (!(tgt = mlp_tokens_arg(tgt_obj, "targets", &c, c.V - 1, n))) goto exit;
        if (!(mk = mlp_mask_arg(mask_obj, n, L))) goto exit;
    }
    if (want_logits) {
        if (check_product(n * L, c.V, 4, "n * length * n_states") < 0 ||
            check_memory((double)n * L * c.V * 4.0, "logits of tokens (n * length * "
                         "n_states float32)") < 0)
            goto exit;
        npy_intp dims[3] = {n, L, c.V};
        if (!(logits = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_FLOAT32))) goto exit;
    }
    if (want_stream) {
        if (check_product(n * D, c.K + 1, 4, "(depth + 1) * n * length * width") < 0 ||
            check_memory((double)n * D * (c.K + 1) * 4.0, "residual stream of tokens "
                         "((depth + 1) * n * length * width float32)") < 0)
            goto exit;
        npy_intp dims[4] = {c.K + 1, n, L, c.d};
        if (!(stream = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32))) goto exit;
    }
    double nll = 0.0;
    int64_t count = 0;
    const int32_t *x = PyArray_DATA(tok), *tg = tgt ? PyArray_DATA(tgt) : NULL;
    const uint8_t *mm = mk ? PyArray_DATA(mk) : NULL;
    float *lo = logits ? PyArray_DATA(logits) : NULL, *st = stream ? PyArray_DATA(stream) : NULL;
    Py_BEGIN_ALLOW_THREADS
    rg_pool pool;
    rg_pool_init(&pool, compute_threads);
    for (int64_t i0 = 0; i0 < n; i0 += batch) {
        int64_t B = n - i0 < batch ? n - i0 : batch, cnt = 0;
        double s = 0.0;
        rg_mlp_forward(&pool, &c, p, ws, B, x + i0 * L, lo ? lo + i0 * L * c.V : NULL,
                       st ? st + i0 * D : NULL, n * D, tg ? tg + i0 * L : NULL,
                       mm ? mm + i0 * L : NULL, &s, &cnt);
        nll += s;
        count += cnt;
    }
    rg_pool_destroy(&pool);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OOdL", logits ? (PyObject *)logits : Py_None,
                           stream ? (PyObject *)stream : Py_None, nll, (long long)count);
exit:
    Py_XDECREF(tok); Py_XDECREF(tgt); Py_XDECREF(mk); Py_XDECREF(logits); Py_XDECREF(stream);
    return result;
}

/* mlp_gradients(config, params, grads, workspace, masked, targets, mask) -> loss
 * One forward + backward over all n rows (the workspace must hold batch n); grads is
 * overwritten with the gradient of the mean masked cross-entropy. */
static PyObject *py_mlp_gradients(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj, *p_obj, *g_obj, *ws_obj, *tok_obj, *tgt_obj, *mask_obj, *result = NULL;
    int64_t n_params;
    rg_mlp_config c;
    if (!PyArg_ParseTuple(args, "OOOOOOO:mlp_gradients", &cfg_obj, &p_obj, &g_obj, &ws_obj,
                          &tok_obj, &tgt_obj, &mask_obj))
        return NULL;
    if (mlp_config_arg(cfg_obj, &c, &n_params) < 0) return NULL;
    const float *p = mlp_arena_arg(p_obj, "params", n_params, 0);
    float *g = p ? mlp_arena_arg(g_obj, "grads", n_params, 1) : NULL;
    if (!g) return NULL;
    PyArrayObject *tok = NULL, *tgt = NULL, *mk = NULL;
    if (!(tok = mlp_tokens_arg(tok_obj, "masked_tokens", &c, c.V, -1))) goto exit;
    int64_t n = PyArray_DIM(tok, 0);
    if (!(tgt = mlp_tokens_arg(tgt_obj, "tokens", &c, c.V - 1, n))) goto exit;
    if (!(mk = mlp_mask_arg(mask_obj, n, c.L))) goto exit;
    void *ws = mlp_workspace_arg(ws_obj, &c, n);
    if (!ws) goto exit;
    double nll = 0.0;
    int64_t count = 0;
    const uint8_t *mm = PyArray_DATA(mk);
    for (int64_t i = 0; i < n * c.L; i++) count += mm[i] != 0;
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "mask hides no token: the loss over masked "
                        "positions is undefined");
        goto exit;
    }
    Py_BEGIN_ALLOW_THREADS
    rg_pool pool;
    rg_pool_init(&pool, compute_threads);
    rg_mlp_forward(&pool, &c, p, ws, n, PyArray_DATA(tok), NULL, NULL, 0, PyArray_DATA(tgt),
                   mm, &nll, &count);
    rg_mlp_backward(&pool, &c, p, g, ws, n, PyArray_DATA(tok), PyArray_DATA(tgt), mm, count);
    rg_pool_destroy(&pool);
    Py_END_ALLOW_THREADS
    result = PyFloat_FromDouble(nll / (double)count);
exit:
    Py_XDECREF(tok); Py_XDECREF(tgt); Py_XDECREF(mk);
    return result;
}

/* Inverse-CDF tables of a validated chain with V states; NULL with an exception otherwise. */
static uint64_t *mlp_chain_thresholds(PyObject *T_obj, PyObject *pi_obj, int64_t V,
                                      int64_t *V_out)
{
    PyArrayObject *T = transition_arg(T_obj, 1e-9), *pi = NULL;
    uint64_t *thr = NULL;
    if (!T) return NULL;
    if (V > 0 && PyArray_DIM(T, 0) != V) {
        rg_error(PyExc_ValueError, "the chain has %ld states but the model has n_states = %lld",
                 (long)PyArray_DIM(T, 0), (long long)V);
        goto exit;
    }
    V = *V_out = PyArray_DIM(T, 0);
    if (!(pi = stationary_arg(pi_obj, V))) goto exit;
    thr = PyMem_Malloc(sizeof(uint64_t) * (size_t)((V + 1) * V));
    if (!thr) { PyErr_NoMemory(); goto exit; }
    rg_sampler_thresholds(PyArray_DATA(T), PyArray_DATA(pi), V, thr);
exit:
    Py_DECREF(T);
    Py_XDECREF(pi);
    return thr;
}

static int mlp_mask_opts(double rate, int64_t span)
{
    if (!(rate >= 0.0 && rate <= 1.0)) {
        rg_error(PyExc_ValueError, "mask_rate must lie in [0, 1], got %.17g", rate);
        return -1;
    }
    return check_positive(span, "mask_span");
}

/* mlp_train_batch(transition, stationary, seed, step, batch, length, mask_rate, mask_span)
 * -> (tokens int32, masked int32, mask bool), each (batch, length): the batch of step `step`. */
static PyObject *py_mlp_train_batch(PyObject *self, PyObject *args)
{
    PyObject *T_obj, *pi_obj, *result = NULL;
    uint64_t seed;
    int64_t step, B, L, span;
    double rate;
    if (!PyArg_ParseTuple(args, "OOO&O&O&O&dO&:mlp_train_batch", &T_obj, &pi_obj, seed_arg,
                          &seed, size_arg, &step, size_arg, &B, size_arg, &L, &rate, size_arg,
                          &span))
        return NULL;
    if (step < 0 || step > (int64_t)UINT32_MAX) {
        rg_error(PyExc_ValueError, "step must lie in [0, 2**32), got %lld", (long long)step);
        return NULL;
    }
    if (check_positive(B, "batch") < 0 || check_positive(L, "length") < 0 ||
        mlp_mask_opts(rate, span) < 0 || check_product(B, L, 4, "batch * length") < 0)
        return NULL;
    if (B > (int64_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "batch must be < 2**32");
        return NULL;
    }
    int64_t V = 0;
    uint64_t *thr = mlp_chain_thresholds(T_obj, pi_obj, -1, &V);
    if (!thr) return NULL;
    npy_intp dims[2] = {B, L};
    PyArrayObject *tok = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_INT32);
    PyArrayObject *msk = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_INT32);
    PyArrayObject *mk = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_BOOL);
    if (tok && msk && mk) {
        Py_BEGIN_ALLOW_THREADS
        rg_train_batch(thr, V, L, B, seed, (uint64_t)step, rate, span, PyArray_DATA(tok),
                       PyArray_DATA(msk), PyArray_DATA(mk));
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("OOO", tok, msk, mk);
    }
    PyMem_Free(thr);
    Py_XDECREF(tok); Py_XDECREF(msk); Py_XDECREF(mk);
    return result;
}

/* mlp_train_steps(config, params, grads, adam_m, adam_v, workspace, batch, transition,
 *                 stationary, seed, step0, lrs, weight_decay, max_grad_norm, mask_rate,
 *                 mask_span) -> (losses float64 (k,), n_done, bad)
 * bad: 0 ok, 1 non-finite loss at step step0 + n_done (not applied), 2 non-finite parameter
 * after step step0 + n_done - 1. */
static PyObject *py_mlp_train_steps(PyObject *self, PyObject *args)
{
    PyObject *cfg_obj, *p_obj, *g_obj, *m_obj, *v_obj, *ws_obj, *T_obj, *pi_obj, *lr_obj;
    PyObject *result = NULL;
    rg_mlp_config c;
    int64_t n_params, B, step0, span;
    uint64_t seed;
    double wd, max_norm, rate;
    if (!PyArg_ParseTuple(args, "OOOOOOO&OOO&O&OdddO&:mlp_train_steps", &cfg_obj, &p_obj,
                          &g_obj, &m_obj, &v_obj, &ws_obj, size_arg, &B, &T_obj, &pi_obj,
                          seed_arg, &seed, size_arg, &step0, &lr_obj, &wd, &max_norm, &rate,
                          size_arg, &span))
        return NULL;
    if (mlp_config_arg(cfg_obj, &c, &n_params) < 0 ||
        check_positive(B, "batch_size") < 0 || mlp_mask_opts(rate, span) < 0)
        return NULL;
    if (B > (int64_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "batch_size must be < 2**32");
        return NULL;
    }
    if (!(wd >= 0.0 && isfinite(wd))) {
        rg_error(PyExc_ValueError, "weight_decay must be finite and >= 0, got %.17g", wd);
        return NULL;
    }
    if (isnan(max_norm) || isinf(max_norm)) {
        rg_error(PyExc_ValueError, "max_grad_norm must be finite, got %.17g", max_norm);
        return NULL;
    }
    float *p = mlp_arena_arg(p_obj, "params", n_params, 1);
    float *g = p ? mlp_arena_arg(g_obj, "grads", n_params, 1) : NULL;
    float *am = g ? mlp_arena_arg(m_obj, "adam_m", n_params, 1) : NULL;
    float *av = am ? mlp_arena_arg(v_obj, "adam_v", n_params, 1) : NULL;
    void *ws = av ? mlp_workspace_arg(ws_obj, &c, B) : NULL;
    if (!ws) return NULL;
    if (p == g || p == am || p == av || g == am || g == av || am == av) {
        PyErr_SetString(PyExc_ValueError, "params, grads, adam_m and adam_v must be distinct");
        return NULL;
    }
    PyArrayObject *lrs = float64_array(lr_obj, "lrs", 1, "of shape (k,)"), *losses = NULL;
    uint64_t *thr = NULL;
    if (!lrs) return NULL;
    int64_t k = PyArray_DIM(lrs, 0);
    const double *lr = PyArray_DATA(lrs);
    for (int64_t i = 0; i < k; i++)
        if (lr[i] < 0.0) {
            rg_error(PyExc_ValueError, "lrs[%lld] = %.17g is negative", (long long)i, lr[i]);
            goto exit;
        }
    if (step0 < 0 || step0 + k > (int64_t)UINT32_MAX) {
        rg_error(PyExc_ValueError, "steps must stay below 2**32, got step0 = %lld, k = %lld",
                 (long long)step0, (long long)k);
        goto exit;
    }
    int64_t V_chain = 0;
    if (!(thr = mlp_chain_thresholds(T_obj, pi_obj, c.V, &V_chain))) goto exit;
    npy_intp dims[1] = {k};
    if (!(losses = (PyArrayObject *)PyArray_ZEROS(1, dims, NPY_FLOAT64, 0))) goto exit;
    rg_train_opts o = {{0.9, 0.999, 1e-8, wd}, max_norm, rate, span};
    rg_train_arenas ar = {p, g, am, av};
    int64_t done = 0;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    rg_pool pool;
    rg_pool_init(&pool, compute_threads);
    rg_train_steps(&pool, &c, &ar, ws, B, thr, seed, (uint64_t)step0, k, lr, &o,
                   PyArray_DATA(losses), &done, &bad);
    rg_pool_destroy(&pool);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OLi", losses, (long long)done, bad);
exit:
    PyMem_Free(thr);
    Py_DECREF(lrs);
    Py_XDECREF(losses);
    return result;
}
/* ---- MLP bindings (end) ---- */

/* ------------------------------------------------------------------------------------------ */

/* ---- analysis bindings (begin) ---- */
/* Effective rank and CKA: float32/float64 arrays are read in place through their strides (no
 * copy); other real dtypes are converted to float64 when that is exact; NaN/Inf are found by
 * the kernels while they copy, and reported naming the argument. */

/* 2^53: integers up to this magnitude are exact in float64. */
#define RG_EXACT_INT ((int64_t)1 << 53)

/* obj as an aligned, native-order float32/float64 array of at least min_ndim dimensions with
 * no zero-sized matrix axis (the last two). */
static PyArrayObject *analysis_array(PyObject *obj, const char *name, int min_ndim, int max_ndim)
{
    PyArrayObject *a = as_any_array(obj, name), *out = NULL;
    if (!a) return NULL;
    char buf[160];
    int type = PyArray_TYPE(a), target = NPY_FLOAT64;
    if (type == NPY_FLOAT32 || type == NPY_FLOAT64) {
        target = type;
    } else if (type == NPY_HALF || type == NPY_BYTE || type == NPY_UBYTE || type == NPY_SHORT ||
               type == NPY_USHORT || type == NPY_INT || type == NPY_UINT) {
        target = NPY_FLOAT64;  /* every value is exact in float64 */
    } else if (PyArray_ISINTEGER(a)) {
        /* 64-bit integers: exact in float64 only up to 2^53 in magnitude */
        PyArrayObject *u = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, PyArray_ISUNSIGNED(a)
                                                            ? NPY_UINT64 : NPY_INT64, 0, 0,
                                                            NPY_ARRAY_IN_ARRAY);
        if (!u) goto exit;
        npy_intp size = PyArray_SIZE(u);
        int ok = 1;
        if (PyArray_ISUNSIGNED(a)) {
            const uint64_t *x = PyArray_DATA(u);
            for (npy_intp k = 0; k < size && ok; k++) ok = x[k] <= (uint64_t)RG_EXACT_INT;
        } else {
            const int64_t *x = PyArray_DATA(u);
            for (npy_intp k = 0; k < size && ok; k++)
                ok = x[k] <= RG_EXACT_INT && x[k] >= -RG_EXACT_INT;
        }
        Py_DECREF(u);
        if (!ok) {
            describe(a, buf, sizeof buf);
            rg_error(PyExc_ValueError, "%s (a %s) holds integers beyond 2**53 that float64 "
                     "cannot represent exactly", name, buf);
            goto exit;
        }
    } else {
        describe(a, buf, sizeof buf);
        rg_error(PyExc_TypeError, "%s must be a real float32 or float64 array (or integers / "
                 "float16, converted exactly), got a %s", name, buf);
        goto exit;
    }
    int nd = PyArray_NDIM(a);
    if (nd < min_ndim || nd > max_ndim) {
        describe(a, buf, sizeof buf);
        if (min_ndim == max_ndim)
            rg_error(PyExc_ValueError, "%s must be a %d-D array (n_samples, n_features), got "
                     "a %s", name, min_ndim, buf);
        else
            rg_error(PyExc_ValueError, "%s must have at least %d dimensions (..., n_samples, "
                     "n_features), got a %s", name, min_ndim, buf);
        goto exit;
    }
    if (PyArray_DIM(a, nd - 2) < 1 || PyArray_DIM(a, nd - 1) < 1) {
        describe(a, buf, sizeof buf);
        rg_error(PyExc_ValueError, "%s needs at least one sample and one feature, got a %s",
                 name, buf);
        goto exit;
    }
    if (PyArray_DIM(a, nd - 2) > INT32_MAX || PyArray_DIM(a, nd - 1) > INT32_MAX) {
        describe(a, buf, sizeof buf);
        rg_error(PyExc_ValueError, "%s is too large for 32-bit LAPACK (%s)", name, buf);
        goto exit;
    }
    if (target != type && check_copy(a, target, 8.0, name) < 0) goto exit;
    /* a no-op for aligned native float32/float64; otherwise an exact conversion */
    out = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, target, 0, 0, NPY_ARRAY_ALIGNED);
exit:
    Py_DECREF(a);
    return out;
}

static rg_view analysis_view(PyArrayObject *a)
{
    int nd = PyArray_NDIM(a);
    rg_view v;
    v.data = PyArray_BYTES(a);
    v.dtype = PyArray_TYPE(a) == NPY_FLOAT32 ? RG_FLOAT32 : RG_FLOAT64;
    v.rows = PyArray_DIM(a, nd - 2);
    v.cols = PyArray_DIM(a, nd - 1);
    v.row_stride = PyArray_STRIDE(a, nd - 2);
    v.col_stride = PyArray_STRIDE(a, nd - 1);
    return v;
}

static int measure_code(const char *m)
{
    static const char *names[] = {"erank", "participation", "stable", "numerical", "spectrum"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(m, names[i])) return i;
    rg_error(PyExc_ValueError, "measure must be one of 'erank', 'participation', 'stable', "
             "'numerical', 'spectrum', got '%s'", m);
    return -1;
}

static PyObject *py_rank(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"X", "measure", "center", "squared", "tol", "name", NULL};
    PyObject *x_obj, *result = NULL;
    const char *mname = "erank", *name = "X";
    int center = 1, squared = 0;
    double tol = -1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|sppds:rank", kwlist, &x_obj, &mname,
                                     &center, &squared, &tol, &name))
        return NULL;
    int measure = measure_code(mname);
    if (measure < 0) return NULL;
    if (!(tol < 0.0 || isfinite(tol))) {
        rg_error(PyExc_ValueError, "tol must be finite and >= 0, got %g", tol);
        return NULL;
    }
    PyArrayObject *X = analysis_array(x_obj, name, 2, RG_MAX_BATCH_DIMS + 2), *out = NULL;
    PyArrayObject *route = NULL;
    if (!X) return NULL;
    int nd = PyArray_NDIM(X);
    rg_stack st;
    st.base = analysis_view(X);
    st.nbatch = nd - 2;
    npy_intp dims[RG_MAX_BATCH_DIMS + 1];
    int64_t count = 1;
    for (int d = 0; d < nd - 2; d++) {
        st.batch_shape[d] = dims[d] = PyArray_DIM(X, d);
        st.batch_stride[d] = PyArray_STRIDE(X, d);
        count *= dims[d];
    }
    int64_t n = st.base.rows, f = st.base.cols, k = n < f ? n : f;
    if (check_product(n, f, 8, "n_samples * n_features") < 0 ||
        check_product(count, k, 8, "matrices * min(n_samples, n_features)") < 0 ||
        check_product(k, k, 8, "min(n_samples, n_features)^2") < 0)
        goto exit;
    /* the kernel's workspace (a float64 copy of one matrix, its Gram) and the outputs */
    if (check_memory((2.0 * n * f + (double)k * k) * 8.0 + (double)count * (k + 1) * 8.0, name)
        < 0)
        goto exit;
    int ndo = nd - 2;
    if (measure == RG_MEASURE_SPECTRUM) dims[ndo++] = k;
    out = (PyArrayObject *)PyArray_SimpleNew(ndo, dims, NPY_FLOAT64);
    route = (PyArrayObject *)PyArray_SimpleNew(nd - 2, dims, NPY_UINT8);
    if (!out || !route) goto exit;
    int status;
    int64_t bad = 0;
    Py_BEGIN_ALLOW_THREADS
    status = rg_rank_batch(&st, center, measure, squared, tol, PyArray_DATA(out),
                           PyArray_DATA(route), &bad);
    Py_END_ALLOW_THREADS
    if (status == RG_ERR_NOT_FINITE) {
        rg_error(PyExc_ValueError, "%s contains NaN or Inf (in matrix %lld of the stack, "
                 "counted in C order over the leading axes)", name, (long long)bad);
        goto exit;
    }
    if (status != RG_OK) { raise_status(status, name); goto exit; }
    result = Py_BuildValue("NN", out, route);
    out = route = NULL;
exit:
    Py_DECREF(X);
    Py_XDECREF(out);
    Py_XDECREF(route);
    return result;
}

static PyObject *py_cka(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"layers", "consecutive", "debiased", "names", NULL};
    PyObject *seq_obj, *names = Py_None, *result = NULL, *seq = NULL;
    int consecutive = 0, debiased = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|ppO:cka", kwlist, &seq_obj, &consecutive,
                                     &debiased, &names))
        return NULL;
    seq = PySequence_Fast(seq_obj, "layers must be a sequence of 2-D arrays");
    if (!seq) return NULL;
    Py_ssize_t L = PySequence_Fast_GET_SIZE(seq);
    PyArrayObject **arr = NULL, *out = NULL;
    rg_view *views = NULL;
    if (L < 1) {
        PyErr_SetString(PyExc_ValueError, "layers must hold at least one array");
        goto exit;
    }
    if (names != Py_None && (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) != L)) {
        PyErr_SetString(PyExc_TypeError, "names must be None or a tuple with one str per layer");
        goto exit;
    }
    for (Py_ssize_t l = 0; names != Py_None && l < L; l++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(names, l))) {
            PyErr_SetString(PyExc_TypeError, "names must be None or a tuple with one str per "
                            "layer");
            goto exit;
        }
    arr = PyMem_Calloc((size_t)L, sizeof *arr);
    views = PyMem_Calloc((size_t)L, sizeof *views);
    if (!arr || !views) { PyErr_NoMemory(); goto exit; }
    int64_t n = 0, W = 0;
    for (Py_ssize_t l = 0; l < L; l++) {
        char name[64];
        if (names != Py_None) {
            const char *s = PyUnicode_AsUTF8(PyTuple_GET_ITEM(names, l));
            if (!s) goto exit;
            snprintf(name, sizeof name, "%s", s);
        } else {
            snprintf(name, sizeof name, "layer %zd", l);
        }
        arr[l] = analysis_array(PySequence_Fast_GET_ITEM(seq, l), name, 2, 2);
        if (!arr[l]) goto exit;
        views[l] = analysis_view(arr[l]);
        if (l == 0) n = views[l].rows;
        if (views[l].rows != n) {
            rg_error(PyExc_ValueError, "%s has %lld samples but the first has %lld: every "
                     "representation must have the same samples (rows)", name,
                     (long long)views[l].rows, (long long)n);
            goto exit;
        }
        W += views[l].cols;
        if (W > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "the total feature count is too large for "
                            "32-bit BLAS");
            goto exit;
        }
    }
    if (debiased && n < 4) {
        rg_error(PyExc_ValueError, "%s has %lld rows: the debiased CKA estimator needs at "
                 "least 4 samples", names != Py_None ?
                 PyUnicode_AsUTF8(PyTuple_GET_ITEM(names, 0)) : "layer 0", (long long)n);
        goto exit;
    }
    if (check_product(n, W, 8, "n_samples * total features") < 0 ||
        check_product(L, L, 8, "layers^2") < 0)
        goto exit;
    /* the kernel's workspace holds every centred layer in float64 */
    char what[160];
    snprintf(what, sizeof what, "%s%s (a float64 copy of every representation)",
             names != Py_None ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(names, 0)) : "layers",
             names != Py_None && L > 1 ? " and the other layers" : "");
    if (check_memory(((double)n * W + (double)L * n + (double)L * L) * 8.0, what) < 0)
        goto exit;
    npy_intp dims[2] = {L, L};
    out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT64);
    if (!out) goto exit;
    int status, sample_space = 0;
    int64_t bad = 0;
    Py_BEGIN_ALLOW_THREADS
    status = rg_cka_layers(views, L, consecutive, debiased, PyArray_DATA(out), &sample_space,
                           &bad);
    Py_END_ALLOW_THREADS
    if (status == RG_ERR_NOT_FINITE) {
        if (names != Py_None)
            rg_error(PyExc_ValueError, "%s contains NaN or Inf",
                     PyUnicode_AsUTF8(PyTuple_GET_ITEM(names, bad)));
        else
            rg_error(PyExc_ValueError, "layer %lld contains NaN or Inf", (long long)bad);
        goto exit;
    }
    if (status != RG_OK) { raise_status(status, "cka"); goto exit; }
    result = Py_BuildValue("Ni", out, sample_space);
    out = NULL;
exit:
    if (arr)
        for (Py_ssize_t l = 0; l < L; l++) Py_XDECREF(arr[l]);
    PyMem_Free(arr);
    PyMem_Free(views);
    Py_XDECREF(out);
    Py_DECREF(seq);
    return result;
}
/* ---- analysis bindings (end) ---- */

static PyObject *py_check_memory(PyObject *self, PyObject *args)
{
    double bytes;
    const char *what;
    if (!PyArg_ParseTuple(args, "ds:check_memory", &bytes, &what)) return NULL;
    if (check_memory(bytes, what) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_available_memory(PyObject *self, PyObject *noargs)
{
    return PyFloat_FromDouble(rg_available_bytes());
}

static PyMethodDef methods[] = {
    {"chain_check", py_chain_check, METH_VARARGS,
     "chain_check(transition, tol): raise ValueError unless transition is row-stochastic."},
    {"chain_stationary", py_chain_stationary, METH_VARARGS,
     "chain_stationary(transition) -> (V,) float64 stationary law (GTH)."},
    {"chain_eigenvalues", py_chain_eigenvalues, METH_VARARGS,
     "chain_eigenvalues(transition) -> (V,) complex128, unsorted (LAPACK dgeev)."},
    {"chain_sample", (PyCFunction)(void (*)(void))py_chain_sample, METH_VARARGS | METH_KEYWORDS,
     "chain_sample(transition, stationary, n, length, seed, first=0) -> (n, length) int32."},
    {"mask_tokens", (PyCFunction)(void (*)(void))py_mask_tokens, METH_VARARGS | METH_KEYWORDS,
     "mask_tokens(tokens, rate, span, seed, mask_id, first=0) -> (masked int32, mask bool)."},
    {"chain_posterior", py_chain_posterior, METH_VARARGS,
     "chain_posterior(transition, stationary, tokens, mask) -> (n, length, V) float64."},
    {"chain_bayes_nll", py_chain_bayes_nll, METH_VARARGS,
     "chain_bayes_nll(transition, stationary, tokens, mask) -> (sum of -log p, count)."},
    {"blas_info", py_blas_info, METH_NOARGS,
     "blas_info() -> (provider, OpenBLAS config string, OpenBLAS thread count)."},
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads(n) -> previous: threads of the model kernels' pool."},
    {"philox4x32_10", py_philox, METH_VARARGS,
     "philox4x32_10((c0, c1, c2, c3), (k0, k1)) -> 4 words; for known-answer tests."},
    /* MLP */
    {"mlp_layout", py_mlp_layout, METH_VARARGS,
     "mlp_layout(config) -> (n_params, offsets (n_tensors,) int64, sizes (n_tensors,) int64)."},
    {"mlp_workspace_bytes", py_mlp_workspace_bytes, METH_VARARGS,
     "mlp_workspace_bytes(config, batch) -> bytes of workspace for batches of that size."},
    {"mlp_init", py_mlp_init, METH_VARARGS,
     "mlp_init(config, params, seed): reproducible PyTorch-default initialisation in place."},
    {"mlp_forward", py_mlp_forward, METH_VARARGS,
     "mlp_forward(config, params, workspace, batch, tokens, want_logits, want_stream, "
     "targets=None, mask=None) -> (logits | None, stream | None, nll_sum, count)."},
    {"mlp_gradients", py_mlp_gradients, METH_VARARGS,
     "mlp_gradients(config, params, grads, workspace, masked, targets, mask) -> loss; "
     "grads overwritten."},
    {"mlp_train_batch", py_mlp_train_batch, METH_VARARGS,
     "mlp_train_batch(transition, stationary, seed, step, batch, length, mask_rate, "
     "mask_span) -> (tokens, masked, mask) of training step `step`."},
    {"mlp_train_steps", py_mlp_train_steps, METH_VARARGS,
     "mlp_train_steps(config, params, grads, adam_m, adam_v, workspace, batch, transition, "
     "stationary, seed, step0, lrs, weight_decay, max_grad_norm, mask_rate, mask_span) -> "
     "(losses, n_done, bad)."},
    /* analysis */
    {"rank", (PyCFunction)(void (*)(void))py_rank, METH_VARARGS | METH_KEYWORDS,
     "rank(X, measure='erank', center=True, squared=False, tol=-1.0, name='X') -> (values, "
     "used_svd): a measure (or 'spectrum') of every (n, f) matrix of X (..., n, f)."},
    {"cka", (PyCFunction)(void (*)(void))py_cka, METH_VARARGS | METH_KEYWORDS,
     "cka(layers, consecutive=False, debiased=False, names=None) -> ((L, L) float64, "
     "sample_space): linear CKA between 2-D arrays with equal row counts."},
    {"check_memory", py_check_memory, METH_VARARGS,
     "check_memory(nbytes, what): raise MemoryLimitError naming `what` if nbytes (>= 64 MiB) "
     "exceed the memory available now."},
    {"available_memory", py_available_memory, METH_NOARGS,
     "available_memory() -> bytes available now (MemAvailable, cgroup-capped), -1 if unknown."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_core",
    .m_doc = "rgflow's C compute core.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    rg_blas_serial(); /* rgflow's pool owns the parallelism (pool.h) */
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    MemoryLimitError = PyErr_NewExceptionWithDoc(
        "rgflow.MemoryLimitError", "A request for more memory than is available (raised "
        "before allocating).", PyExc_MemoryError, NULL);
    if (!MemoryLimitError || PyModule_AddObjectRef(m, "MemoryLimitError", MemoryLimitError) < 0 ||
        PyModule_AddIntConstant(m, "MAX_STATES", RG_MAX_STATES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
