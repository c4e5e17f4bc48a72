/* The converter layer of rgflow._core, shared by the domain bindings (py_chain.c, py_mlp.c,
 * py_analysis.c, py_runtime.c; module.c adds their tables).  Only the py_*.c files see
 * Python.h; the kernels never do.
 *
 * A wrapper parses its arguments with PyArg_ParseTuple's "O&" and the converters below, each
 * of which carries the argument's name (in a spec struct the wrapper fills in) so that every
 * error names it; validates what depends on several arguments; allocates its outputs (after
 * rg_py_check_memory); calls the kernel with the GIL released; maps the kernel's status with
 * rg_py_status; and releases every reference at one `exit:` label (as scipy.ndimage's
 * nd_image.c does).  Converters return 1 on success and 0 with an exception set; they keep
 * what they convert in the spec (new references), so the wrapper's exit label releases it
 * whether parsing finished or not. */
#ifndef RG_PY_CONVERT_H
#define RG_PY_CONVERT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_23_API_VERSION
#define NPY_TARGET_VERSION NPY_1_23_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL rg_ARRAY_API
#ifndef RG_PY_IMPORT_ARRAY /* defined by module.c alone, which calls import_array */
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include <stdint.h>

#include "chain.h"

/* ---- errors ------------------------------------------------------------------------------- */

/* PyErr_Format knows no floating-point conversions: this formats with vsnprintf. */
void rg_py_error(PyObject *type, const char *fmt, ...);

/* The exception of a kernel status (status.h): MemoryError for RG_ERR_NOMEM, RuntimeError for
 * RG_ERR_LAPACK, ValueError "<context>: <what>" otherwise.  Returns NULL. */
PyObject *rg_py_status(int status, const char *context);

/* rgflow.MemoryLimitError (a MemoryError): a request larger than the memory available now. */
extern PyObject *rg_MemoryLimitError;
int rg_py_add_errors(PyObject *module);

/* 0 if `bytes` fit in the memory available now (memory.h); else -1 with MemoryLimitError
 * "<what> needs ... GB".  The one check before every large allocation, in C and (through
 * _core.check_memory) in Python. */
int rg_py_check_memory(double bytes, const char *what);

/* n * m * itemsize must be addressable; else -1 with ValueError "<what> = n x m is too large". */
int rg_py_check_product(int64_t n, int64_t m, int64_t itemsize, const char *what);

/* 0 if every axis of a has a positive length; else -1 with ValueError
 * "<name>.shape[i] must be positive, got 0". */
int rg_py_check_nonempty(PyArrayObject *a, const char *name);

/* A new C-contiguous array of `type` (uninitialised / zeros); NULL with an exception. */
PyArrayObject *rg_py_empty(int nd, const npy_intp *dims, int type);
PyArrayObject *rg_py_zeros(int nd, const npy_intp *dims, int type);

/* "float64 array of shape (3, 4)", for messages. */
void rg_py_describe(PyArrayObject *a, char *buf, size_t size);

/* ---- O& converters ------------------------------------------------------------------------ */

/* An array argument: the wrapper fills in the spec, the converter the reference. */
typedef struct {
    const char *name;    /* the argument's name, in every message */
    int ndim;            /* the required rank (real matrices: the least) */
    int max_ndim;        /* real matrices: the largest rank (0: ndim) */
    const char *shape;   /* how messages state the shape, e.g. "of shape (n, length)" */
    int64_t lo, hi;      /* int32 arrays: every value lies in [lo, hi] */
    int optional;        /* None is accepted and leaves a NULL */
    PyArrayObject *a;    /* out: a new reference (released by the wrapper), NULL before */
} rg_array;
#define RG_ARRAY(name, ndim, shape) {name, ndim, 0, shape, 0, 0, 0, NULL}

/* float64, C-contiguous, every value finite (integers and float16/32/64 are converted
 * losslessly; bool, complex, object and long double are refused). */
int rg_float64_conv(PyObject *obj, void *spec);
/* int32, C-contiguous, every value in [lo, hi] (checked before narrowing). */
int rg_int32_conv(PyObject *obj, void *spec);
/* bool, C-contiguous (one byte 0 or 1 per element). */
int rg_bool_conv(PyObject *obj, void *spec);
/* A stack of real matrices (..., n_samples, n_features) of rank ndim to max_ndim: float32 and
 * float64 read in place through their strides (aligned, native order), other real dtypes
 * converted to float64 when that is exact; at least one sample and one feature, both below
 * 2^31. */
int rg_real_matrices_conv(PyObject *obj, void *spec);

/* An integer size: v in [min, max] (Python ints beyond int64 clamp to the nearest bound +/- 1
 * so that the message shows they are out of range). */
typedef struct {
    const char *name;
    int64_t min, max;
    int64_t v;           /* out */
} rg_size;
#define RG_SIZE(name, min, max) {name, min, max, 0}
int rg_size_conv(PyObject *obj, void *spec);

/* A real number (anything with __float__) in [lo, hi], either end open if asked; NaN never. */
typedef struct {
    const char *name;
    double lo, hi;
    int lo_open, hi_open;
    double v;            /* out */
} rg_real;
#define RG_REAL(name, lo, hi, lo_open, hi_open) {name, lo, hi, lo_open, hi_open, 0.0}
int rg_real_conv(PyObject *obj, void *spec);

/* seed: a Python int in [0, 2^64), into a uint64_t. */
int rg_seed_conv(PyObject *obj, void *out);

/* Converters shared across domains (defined in py_chain.c): a validated Markov chain over V
 * states and, for a hidden Markov task, its emission matrix (V, n_tokens). */
typedef struct {
    double tol;          /* row-sum tolerance of the transition and emission matrices */
    rg_array T, pi, E;   /* float64 (V, V) transition, (V,) stationary law, (V, n_tokens)
                            emission (optional: None for a plain chain) */
    int64_t V, n_tokens; /* out: the chain's states; the tokens (V for a plain chain) */
} rg_chain_arg;
#define RG_CHAIN_ARG {1e-9, RG_ARRAY("transition", 2, "of shape (V, V)"),                \
                      RG_ARRAY("stationary", 1, "of shape (V,)"),                        \
                      {"emission", 2, 0, "of shape (n_hidden, n_states)", 0, 0, 1, NULL}, \
                      0, 0}
int rg_transition_conv(PyObject *obj, void *chain);  /* fills T and V */
int rg_stationary_conv(PyObject *obj, void *chain);  /* fills pi: after the transition */
int rg_emission_conv(PyObject *obj, void *chain);    /* fills E and n_tokens: after both */
void rg_chain_arg_clear(rg_chain_arg *c);
/* The sampling tables of the chain (and emission) in PyMem memory (to PyMem_Free), *src
 * pointing into them (chain.h: rg_source); NULL with MemoryError. */
uint64_t *rg_py_source(const rg_chain_arg *c, rg_source *src);

/* ---- the domain tables module.c adds, and the pool's thread count ------------------------- */

/* A method table entry for a wrapper taking keywords: (function, flags). */
#define RG_KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS

extern PyMethodDef rg_chain_methods[], rg_mlp_methods[], rg_analysis_methods[],
    rg_runtime_methods[];

/* Threads of rgflow's pool for the model kernels (py_runtime.c; results do not depend on it). */
int rg_py_threads(void);

#endif
