/* The converter layer (see py_convert.h). */
#include "py_convert.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "memory.h"
#include "rank.h"
#include "status.h"

/* ---- errors ------------------------------------------------------------------------------- */

void rg_py_error(PyObject *type, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    PyErr_SetString(type, buf);
}

PyObject *rg_py_status(int status, const char *context)
{
    if (status == RG_ERR_NOMEM) return PyErr_NoMemory();
    rg_py_error(status == RG_ERR_LAPACK ? PyExc_RuntimeError : PyExc_ValueError, "%s: %s",
                context, rg_strerror(status));
    return NULL;
}

PyObject *rg_MemoryLimitError;

int rg_py_add_errors(PyObject *module)
{
    rg_MemoryLimitError = PyErr_NewExceptionWithDoc(
        "rgflow.MemoryLimitError", "A request for more memory than is available (raised "
        "before allocating).", PyExc_MemoryError, NULL);
    if (!rg_MemoryLimitError) return -1;
    return PyModule_AddObjectRef(module, "MemoryLimitError", rg_MemoryLimitError);
}

int rg_py_check_memory(double bytes, const char *what)
{
    double avail;
    if (rg_memory_fits(bytes, &avail)) return 0;
    rg_py_error(rg_MemoryLimitError, "%s needs %.3g GB but only %.3g GB of memory is available",
                what, bytes / 1e9, avail / 1e9);
    return -1;
}

int rg_py_check_product(int64_t n, int64_t m, int64_t itemsize, const char *what)
{
    if (n > 0 && m > 0 && n > (int64_t)(PY_SSIZE_T_MAX / itemsize) / m) {
        rg_py_error(PyExc_ValueError, "%s = %lld x %lld is too large", what, (long long)n,
                    (long long)m);
        return -1;
    }
    return 0;
}

int rg_py_check_nonempty(PyArrayObject *a, const char *name)
{
    for (int d = 0; d < PyArray_NDIM(a); d++)
        if (PyArray_DIM(a, d) < 1) {
            rg_py_error(PyExc_ValueError, "%s.shape[%d] must be positive, got %ld", name, d,
                        (long)PyArray_DIM(a, d));
            return -1;
        }
    return 0;
}

PyArrayObject *rg_py_empty(int nd, const npy_intp *dims, int type)
{
    return (PyArrayObject *)PyArray_SimpleNew(nd, (npy_intp *)dims, type);
}

PyArrayObject *rg_py_zeros(int nd, const npy_intp *dims, int type)
{
    return (PyArrayObject *)PyArray_ZEROS(nd, (npy_intp *)dims, type, 0);
}

void rg_py_describe(PyArrayObject *a, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s array of shape (", PyArray_DESCR(a)->typeobj->tp_name);
    for (int d = 0; d < PyArray_NDIM(a) && n > 0 && (size_t)n < size; d++)
        n += snprintf(buf + n, size - (size_t)n, d ? ", %ld" : "%ld", (long)PyArray_DIM(a, d));
    if (n > 0 && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n, PyArray_NDIM(a) == 1 ? ",)" : ")");
}

/* ---- arrays ------------------------------------------------------------------------------- */

/* The error `fmt` ("%s must ..., got a %s") with the argument's name and its description. */
static void array_error(PyObject *type, const char *fmt, const char *name, PyArrayObject *a)
{
    char buf[160];
    rg_py_describe(a, buf, sizeof buf);
    rg_py_error(type, fmt, name, buf);
}

/* MemoryLimitError unless a C-contiguous copy of `a` as `type` (`itemsize` bytes) fits. */
static int check_copy(PyArrayObject *a, int type, double itemsize, const char *name)
{
    if (PyArray_TYPE(a) == type && PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISALIGNED(a) &&
        PyArray_ISNOTSWAPPED(a))
        return 0;
    char what[200];
    snprintf(what, sizeof what, "%s (converted to a contiguous array of %.0f elements)", name,
             (double)PyArray_SIZE(a));
    return rg_py_check_memory((double)PyArray_SIZE(a) * itemsize, what);
}

static PyArrayObject *as_any_array(PyObject *obj, const char *name)
{
    if (obj == Py_None) {
        rg_py_error(PyExc_TypeError, "%s must be an array, got None", name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, NPY_NOTYPE, 0, 0, 0);
    if (!a && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        rg_py_error(PyExc_TypeError, "%s must be array-like", name);
    }
    return a;
}

static int check_ndim(PyArrayObject *a, const rg_array *s)
{
    if (PyArray_NDIM(a) == s->ndim) return 0;
    char buf[160];
    rg_py_describe(a, buf, sizeof buf);
    rg_py_error(PyExc_ValueError, "%s must be a %d-D array %s, got a %s", s->name, s->ndim,
                s->shape, buf);
    return -1;
}

/* obj as an array for spec s, or NULL: None (optional specs: 1 with s->a NULL) or an error. */
static PyArrayObject *spec_array(PyObject *obj, rg_array *s, int *done)
{
    *done = obj == Py_None && s->optional;
    return *done ? NULL : as_any_array(obj, s->name);
}

int rg_float64_conv(PyObject *obj, void *spec)
{
    rg_array *s = spec;
    int done;
    PyArrayObject *a = spec_array(obj, s, &done);
    if (!a) return done;
    int type = PyArray_TYPE(a);
    if (!(PyArray_ISFLOAT(a) || PyArray_ISINTEGER(a)) || type == NPY_LONGDOUBLE)
        array_error(PyExc_TypeError, "%s must be a real floating-point array, got a %s",
                    s->name, a);
    else if (check_ndim(a, s) == 0 && check_copy(a, NPY_FLOAT64, 8.0, s->name) == 0)
        s->a = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, NPY_FLOAT64, 0, 0,
                                                NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(a);
    if (!s->a) return 0;
    const double *x = PyArray_DATA(s->a);
    for (npy_intp k = 0; k < PyArray_SIZE(s->a); k++)
        if (!isfinite(x[k])) {
            rg_py_error(PyExc_ValueError, "%s contains a non-finite value (%s) at flat index %zd",
                        s->name, isnan(x[k]) ? "nan" : x[k] > 0 ? "inf" : "-inf", k);
            Py_CLEAR(s->a);
            return 0;
        }
    return 1;
}

/* ValueError for the value at flat index k of an integer array outside [lo, hi] (%.0f prints
 * every integer exactly up to 2^53 and the magnitude beyond, enough to name the culprit). */
static void outside_error(const rg_array *s, double value, npy_intp k)
{
    rg_py_error(PyExc_ValueError, "%s has a value %.0f at flat index %zd outside [%lld, %lld]",
                s->name, value, k, (long long)s->lo, (long long)s->hi);
}

/* Flat index of the first value of the C-contiguous integer array a (NPY_INT32, NPY_INT64 or
 * NPY_UINT64) outside [lo, hi] (unsigned: above hi), with the value in *value; -1 if none. */
static npy_intp first_outside(PyArrayObject *a, int64_t lo, int64_t hi, double *value)
{
    const npy_intp n = PyArray_SIZE(a);
    const void *p = PyArray_DATA(a);
    npy_intp k = 0;
    if (PyArray_TYPE(a) == NPY_INT32) {
        const int32_t *x = p;
        while (k < n && x[k] >= lo && x[k] <= hi) k++;
        if (k < n) *value = x[k];
    } else if (PyArray_TYPE(a) == NPY_INT64) {
        const int64_t *x = p;
        while (k < n && x[k] >= lo && x[k] <= hi) k++;
        if (k < n) *value = (double)x[k];
    } else {
        const uint64_t *x = p;
        while (k < n && x[k] <= (uint64_t)hi) k++;
        if (k < n) *value = (double)x[k];
    }
    return k < n ? k : -1;
}

/* a converted to `type` (NPY_INT32, NPY_INT64 or NPY_UINT64), C-contiguous, if every value
 * lies in [s->lo, s->hi]; else NULL with ValueError. */
static PyArrayObject *in_range(PyArrayObject *a, int type, const rg_array *s)
{
    PyArrayObject *out = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, type, 0, 0,
                                                          NPY_ARRAY_IN_ARRAY |
                                                          NPY_ARRAY_FORCECAST);
    double value = 0.0;
    npy_intp k = out ? first_outside(out, s->lo, s->hi, &value) : -1;
    if (k >= 0) {
        outside_error(s, value, k);
        Py_CLEAR(out);
    }
    return out;
}

/* int32 arrays are checked in place of a contiguous copy; other integer types go through
 * int64 (64-bit unsigned ones first through uint64: values >= 2^63 would wrap in int64). */
static PyArrayObject *int32_of(PyArrayObject *a, const rg_array *s)
{
    int type = PyArray_TYPE(a);
    if (type == NPY_INT32)
        return check_copy(a, NPY_INT32, 4.0, s->name) < 0 ? NULL : in_range(a, NPY_INT32, s);
    if (rg_py_check_memory((double)PyArray_SIZE(a) * 20.0, s->name) < 0) return NULL;
    if (type == NPY_UINT64 || type == NPY_ULONGLONG || (type == NPY_ULONG && sizeof(long) == 8)) {
        PyArrayObject *u = in_range(a, NPY_UINT64, s);
        if (!u) return NULL;
        Py_DECREF(u);
    }
    PyArrayObject *wide = in_range(a, NPY_INT64, s), *out = NULL;
    if (wide)
        out = (PyArrayObject *)PyArray_FROMANY((PyObject *)wide, NPY_INT32, 0, 0,
                                               NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    Py_XDECREF(wide);
    return out;
}

int rg_int32_conv(PyObject *obj, void *spec)
{
    rg_array *s = spec;
    int done;
    PyArrayObject *a = spec_array(obj, s, &done);
    if (!a) return done;
    if (!PyArray_ISINTEGER(a))
        array_error(PyExc_TypeError, "%s must be an integer array, got a %s", s->name, a);
    else if (check_ndim(a, s) == 0)
        s->a = int32_of(a, s);
    Py_DECREF(a);
    return s->a != NULL;
}

int rg_bool_conv(PyObject *obj, void *spec)
{
    rg_array *s = spec;
    int done;
    PyArrayObject *a = spec_array(obj, s, &done);
    if (!a) return done;
    if (PyArray_TYPE(a) != NPY_BOOL)
        array_error(PyExc_TypeError, "%s must be a boolean array, got a %s", s->name, a);
    else if (check_ndim(a, s) == 0 && check_copy(a, NPY_BOOL, 1.0, s->name) == 0)
        s->a = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, NPY_BOOL, 0, 0,
                                                NPY_ARRAY_IN_ARRAY);
    Py_DECREF(a);
    return s->a != NULL;
}

/* 2^53: integers up to this magnitude are exact in float64. */
#define RG_EXACT_INT ((int64_t)1 << 53)

/* The dtype real matrices are read as: float32/float64 themselves, float64 for the dtypes it
 * holds exactly (64-bit integers: if every value is within 2^53); -1 with an error if none. */
static int exact_real_type(PyArrayObject *a, const char *name)
{
    int type = PyArray_TYPE(a);
    if (type == NPY_FLOAT32 || type == NPY_FLOAT64) return type;
    if (type == NPY_HALF || type == NPY_BYTE || type == NPY_UBYTE || type == NPY_SHORT ||
        type == NPY_USHORT || type == NPY_INT || type == NPY_UINT)
        return NPY_FLOAT64;
    if (!PyArray_ISINTEGER(a)) {
        array_error(PyExc_TypeError, "%s must be a real float32 or float64 array (or integers / "
                    "float16, converted exactly), got a %s", name, a);
        return -1;
    }
    /* 64-bit integers: exact in float64 only up to 2^53 in magnitude */
    PyArrayObject *u = (PyArrayObject *)PyArray_FROMANY(
        (PyObject *)a, PyArray_ISUNSIGNED(a) ? NPY_UINT64 : NPY_INT64, 0, 0, NPY_ARRAY_IN_ARRAY);
    if (!u) return -1;
    double value;
    npy_intp k = first_outside(u, -RG_EXACT_INT, RG_EXACT_INT, &value);
    Py_DECREF(u);
    if (k < 0) return NPY_FLOAT64;
    array_error(PyExc_ValueError, "%s (a %s) holds integers beyond 2**53 that float64 cannot "
                "represent exactly", name, a);
    return -1;
}

/* The rank and the matrix axes (the last two) of a stack of real matrices. */
static int check_matrices(PyArrayObject *a, const rg_array *s)
{
    const int nd = PyArray_NDIM(a), max_ndim = s->max_ndim ? s->max_ndim : s->ndim;
    if (nd < s->ndim || nd > max_ndim) {
        char buf[160];
        rg_py_describe(a, buf, sizeof buf);
        if (max_ndim == s->ndim)
            rg_py_error(PyExc_ValueError, "%s must be a %d-D array (n_samples, n_features), "
                        "got a %s", s->name, s->ndim, buf);
        else
            rg_py_error(PyExc_ValueError, "%s must have at least %d dimensions (..., "
                        "n_samples, n_features), got a %s", s->name, s->ndim, buf);
        return -1;
    }
    if (PyArray_DIM(a, nd - 2) < 1 || PyArray_DIM(a, nd - 1) < 1) {
        array_error(PyExc_ValueError, "%s needs at least one sample and one feature, got a %s",
                    s->name, a);
        return -1;
    }
    if (PyArray_DIM(a, nd - 2) > INT32_MAX || PyArray_DIM(a, nd - 1) > INT32_MAX) {
        array_error(PyExc_ValueError, "%s is too large for 32-bit LAPACK (%s)", s->name, a);
        return -1;
    }
    return 0;
}

int rg_real_matrices_conv(PyObject *obj, void *spec)
{
    rg_array *s = spec;
    PyArrayObject *a = as_any_array(obj, s->name);
    if (!a) return 0;
    int type = exact_real_type(a, s->name);
    if (type >= 0 && check_matrices(a, s) == 0 &&
        (type == PyArray_TYPE(a) || check_copy(a, type, 8.0, s->name) == 0))
        /* a no-op for aligned native float32/float64; otherwise an exact conversion */
        s->a = (PyArrayObject *)PyArray_FROMANY((PyObject *)a, type, 0, 0, NPY_ARRAY_ALIGNED);
    Py_DECREF(a);
    return s->a != NULL;
}

/* ---- numbers ------------------------------------------------------------------------------ */

int rg_size_conv(PyObject *obj, void *spec)
{
    rg_size *s = spec;
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        rg_py_error(PyExc_TypeError, "%s must be an integer, got %s", s->name,
                    Py_TYPE(obj)->tp_name);
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
    s->v = (int64_t)v;
    if (s->v >= s->min && s->v <= s->max) return 1;
    if (s->min == 1 && s->v < 1)
        rg_py_error(PyExc_ValueError, "%s must be positive, got %lld", s->name, v);
    else if (s->max == INT64_MAX)
        rg_py_error(PyExc_ValueError, "%s must be >= %lld, got %lld", s->name,
                    (long long)s->min, v);
    else
        rg_py_error(PyExc_ValueError, "%s must lie in [%lld, %lld], got %lld", s->name,
                    (long long)s->min, (long long)s->max, v);
    return 0;
}

int rg_real_conv(PyObject *obj, void *spec)
{
    rg_real *s = spec;
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) return 0;
        PyErr_Clear();
        rg_py_error(PyExc_TypeError, "%s must be a real number, got %s", s->name,
                    Py_TYPE(obj)->tp_name);
        return 0;
    }
    s->v = v;
    if ((s->lo_open ? v > s->lo : v >= s->lo) && (s->hi_open ? v < s->hi : v <= s->hi))
        return 1;
    rg_py_error(PyExc_ValueError, "%s must lie in %c%g, %g%c, got %.17g", s->name,
                s->lo_open ? '(' : '[', s->lo, s->hi, s->hi_open ? ')' : ']', v);
    return 0;
}

int rg_seed_conv(PyObject *obj, void *out)
{
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        rg_py_error(PyExc_TypeError, "seed must be an int, got %s", Py_TYPE(obj)->tp_name);
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
