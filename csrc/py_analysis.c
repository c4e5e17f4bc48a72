/* Bindings of the analysis kernels: effective rank (rank.h) and CKA (cka.h).
 *
 * float32/float64 arrays are read in place through their strides (no copy); other real dtypes
 * are converted to float64 when that is exact; NaN/Inf are found by the kernels while they
 * copy, and reported naming the argument. */
#include "py_convert.h"

#include <math.h>
#include <string.h>

#include "cka.h"
#include "pool.h"
#include "rank.h"
#include "status.h"

/* The last two axes of a (a stack of real matrices) as a strided matrix. */
static rg_strided_matrix matrix_of(PyArrayObject *a)
{
    const int nd = PyArray_NDIM(a);
    rg_strided_matrix v;
    v.data = PyArray_BYTES(a);
    v.dtype = PyArray_TYPE(a) == NPY_FLOAT32 ? RG_FLOAT32 : RG_FLOAT64;
    v.rows = PyArray_DIM(a, nd - 2);
    v.cols = PyArray_DIM(a, nd - 1);
    v.row_stride = PyArray_STRIDE(a, nd - 2);
    v.col_stride = PyArray_STRIDE(a, nd - 1);
    return v;
}

/* ---- rank --------------------------------------------------------------------------------- */

static int measure_conv(PyObject *obj, void *out)
{
    static const char *names[] = {"erank", "participation", "stable", "numerical", "spectrum"};
    if (!PyUnicode_Check(obj)) {
        rg_py_error(PyExc_TypeError, "measure must be a str, got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    const char *m = PyUnicode_AsUTF8(obj);
    for (int i = 0; m && i < 5; i++)
        if (!strcmp(m, names[i])) {
            *(int *)out = i;
            return 1;
        }
    if (m)
        rg_py_error(PyExc_ValueError, "measure must be one of 'erank', 'participation', "
                    "'stable', 'numerical', 'spectrum', got '%s'", m);
    return 0;
}

/* The stack of X's matrices and rank's outputs (values and route), checked against the memory
 * available. */
static int rank_outputs(const rg_array *X, int measure, rg_stack *st, PyArrayObject *out[2])
{
    const int nd = PyArray_NDIM(X->a);
    npy_intp dims[RG_MAX_BATCH_DIMS + 1];
    int64_t count = 1;
    st->base = matrix_of(X->a);
    st->nbatch = nd - 2;
    for (int d = 0; d < nd - 2; d++) {
        st->batch_shape[d] = dims[d] = PyArray_DIM(X->a, d);
        st->batch_stride[d] = PyArray_STRIDE(X->a, d);
        count *= dims[d];
    }
    const int64_t n = st->base.rows, f = st->base.cols, k = n < f ? n : f;
    if (rg_py_check_product(n, f, 8, "n_samples * n_features") < 0 ||
        rg_py_check_product(count, k, 8, "matrices * min(n_samples, n_features)") < 0 ||
        rg_py_check_product(k, k, 8, "min(n_samples, n_features)^2") < 0 ||
        /* the kernel's workspace (a float64 copy of one matrix, its Gram) and the outputs */
        rg_py_check_memory((2.0 * n * f + 3.0 * k * k) * 8.0 + (double)count * (k + 1) * 8.0,
                           X->name) < 0)
        return -1;
    dims[nd - 2] = k;
    out[0] = rg_py_empty(nd - 2 + (measure == RG_MEASURE_SPECTRUM),
                                                dims, NPY_FLOAT64);
    out[1] = rg_py_empty(nd - 2, dims, NPY_UINT8);
    return out[0] && out[1] ? 0 : -1;
}

static PyObject *py_rank(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"X", "measure", "center", "squared", "tol", "name", NULL};
    rg_array X = {"X", 2, RG_MAX_BATCH_DIMS + 2, "(..., n_samples, n_features)", 0, 0, 0, NULL};
    rg_real tol = RG_REAL("tol", -INFINITY, INFINITY, 0, 1);
    PyArrayObject *out[2] = {NULL, NULL};
    PyObject *x_obj, *result = NULL;
    int measure = RG_MEASURE_ERANK, center = 1, squared = 0, status;
    int64_t bad = 0;
    rg_stack st;
    tol.v = -1.0; /* numpy.linalg.matrix_rank's default */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O&ppO&s:rank", kwlist, &x_obj, measure_conv,
                                     &measure, &center, &squared, rg_real_conv, &tol, &X.name) ||
        !rg_real_matrices_conv(x_obj, &X) || rank_outputs(&X, measure, &st, out) < 0)
        goto exit;
    Py_BEGIN_ALLOW_THREADS
    status = rg_rank_batch(&st, center, measure, squared, tol.v, PyArray_DATA(out[0]),
                           PyArray_DATA(out[1]), &bad);
    Py_END_ALLOW_THREADS
    if (status == RG_ERR_NOT_FINITE)
        rg_py_error(PyExc_ValueError, "%s contains NaN or Inf (in matrix %lld of the stack, "
                    "counted in C order over the leading axes)", X.name, (long long)bad);
    else if (status != RG_OK)
        rg_py_status(status, X.name);
    else
        result = Py_BuildValue("OO", out[0], out[1]);
exit:
    for (int i = 0; i < 2; i++) Py_XDECREF(out[i]);
    Py_XDECREF(X.a);
    return result;
}

/* ---- CKA ---------------------------------------------------------------------------------- */

/* The representations of cka: a sequence of 2-D arrays with the same rows. */
typedef struct {
    PyObject *seq;          /* a fast sequence */
    PyObject *names;        /* None or a tuple of one str per layer */
    Py_ssize_t n_layers;
    PyArrayObject **arr;    /* the converted layers (new references) */
    rg_strided_matrix *views;
    int64_t n, W;           /* samples; total features */
} layers_arg;

/* The name of layer l in messages. */
static const char *layer_name(const layers_arg *ly, Py_ssize_t l, char *buf, size_t size)
{
    const char *s = ly->names != Py_None ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(ly->names, l))
                                         : NULL;
    if (!s) PyErr_Clear(); /* a name UTF-8 cannot encode: named by its number */
    if (s) snprintf(buf, size, "%s", s);
    else snprintf(buf, size, "layer %zd", l);
    return buf;
}

static int check_names(const layers_arg *ly)
{
    int ok = ly->names == Py_None ||
             (PyTuple_Check(ly->names) && PyTuple_GET_SIZE(ly->names) == ly->n_layers);
    for (Py_ssize_t l = 0; ok && ly->names != Py_None && l < ly->n_layers; l++)
        ok = PyUnicode_Check(PyTuple_GET_ITEM(ly->names, l));
    if (!ok)
        PyErr_SetString(PyExc_TypeError, "names must be None or a tuple with one str per layer");
    return ok ? 0 : -1;
}

/* Layer l converted and checked against the first: same samples, features within 32 bits. */
static int load_layer(layers_arg *ly, Py_ssize_t l)
{
    char name[64];
    rg_array s = {layer_name(ly, l, name, sizeof name), 2, 2, "", 0, 0, 0, NULL};
    if (!rg_real_matrices_conv(PySequence_Fast_GET_ITEM(ly->seq, l), &s)) return -1;
    ly->arr[l] = s.a;
    ly->views[l] = matrix_of(s.a);
    if (l == 0) ly->n = ly->views[0].rows;
    ly->W += ly->views[l].cols;
    if (ly->views[l].rows != ly->n)
        rg_py_error(PyExc_ValueError, "%s has %lld samples but the first has %lld: every "
                    "representation must have the same samples (rows)", name,
                    (long long)ly->views[l].rows, (long long)ly->n);
    else if (ly->W > INT32_MAX)
        PyErr_SetString(PyExc_ValueError, "the total feature count is too large for 32-bit "
                        "BLAS");
    else
        return 0;
    return -1;
}

static int load_layers(layers_arg *ly, PyObject *obj, PyObject *names)
{
    ly->names = names;
    /* the (n_layers, n_layers) result bounds the layers before they are listed (an array of
     * 2^28 rows would otherwise become a list of 2^28 views) */
    const Py_ssize_t len = PySequence_Check(obj) ? PySequence_Size(obj) : -1;
    if (len < 0) PyErr_Clear();
    if (rg_py_check_memory((double)len * (double)len * 8.0, "layers (n_layers^2 CKA values)") < 0)
        return -1;
    if (!(ly->seq = PySequence_Fast(obj, "layers must be a sequence of 2-D arrays"))) return -1;
    ly->n_layers = PySequence_Fast_GET_SIZE(ly->seq);
    if (ly->n_layers < 1) {
        PyErr_SetString(PyExc_ValueError, "layers must hold at least one array");
        return -1;
    }
    if (check_names(ly) < 0) return -1;
    ly->arr = PyMem_Calloc((size_t)ly->n_layers, sizeof *ly->arr);
    ly->views = PyMem_Calloc((size_t)ly->n_layers, sizeof *ly->views);
    if (!ly->arr || !ly->views) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t l = 0; l < ly->n_layers; l++)
        if (load_layer(ly, l) < 0) return -1;
    return 0;
}

static void layers_clear(layers_arg *ly)
{
    for (Py_ssize_t l = 0; ly->arr && l < ly->n_layers; l++) Py_XDECREF(ly->arr[l]);
    PyMem_Free(ly->arr);
    PyMem_Free(ly->views);
    Py_XDECREF(ly->seq);
}

/* The estimator's sample count, the sizes and the kernel's workspace (every centred layer in
 * float64), checked against the memory available. */
static int check_cka(const layers_arg *ly, int debiased)
{
    const double n = (double)ly->n, nl = (double)ly->n_layers;
    char first[64], what[160];
    layer_name(ly, 0, first, sizeof first);
    if (debiased && ly->n < 4) {
        rg_py_error(PyExc_ValueError, "%s has %lld rows: the debiased CKA estimator needs at "
                    "least 4 samples", first, (long long)ly->n);
        return -1;
    }
    snprintf(what, sizeof what, "%s%s (a float64 copy of every representation)",
             ly->names != Py_None ? first : "layers",
             ly->names != Py_None && ly->n_layers > 1 ? " and the other layers" : "");
    return rg_py_check_product(ly->n, ly->W, 8, "n_samples * total features") < 0 ||
                   rg_py_check_product(ly->n_layers, ly->n_layers, 8, "layers^2") < 0 ||
                   rg_py_check_memory((n * (double)ly->W + nl * n + nl * nl) * 8.0, what) < 0
               ? -1 : 0;
}

/* n_threads: a positive int (more than the pool's maximum means the maximum), or None for
 * rgflow's count (rgflow.get_num_threads). */
static int threads_conv(PyObject *obj, void *spec)
{
    rg_size *s = spec;
    if (obj == Py_None) {
        s->v = rg_py_threads();
        return 1;
    }
    if (!rg_size_conv(obj, s)) return 0;
    if (s->v > RG_POOL_MAX) s->v = RG_POOL_MAX;
    return 1;
}

static PyObject *py_cka(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"layers", "consecutive", "debiased", "names", "n_threads", NULL};
    layers_arg ly = {NULL, Py_None, 0, NULL, NULL, 0, 0};
    PyObject *seq, *names = Py_None, *result = NULL;
    PyArrayObject *out = NULL;
    int consecutive = 0, debiased = 0, sample_space = 0, status;
    int64_t bad = 0;
    rg_size n_threads = RG_SIZE("n_threads", 1, INT64_MAX);
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|ppOO&:cka", kwlist, &seq, &consecutive,
                                     &debiased, &names, threads_conv, &n_threads) ||
        load_layers(&ly, seq, names) < 0 || check_cka(&ly, debiased) < 0 ||
        !(out = rg_py_empty(
              2, (npy_intp[]){ly.n_layers, ly.n_layers}, NPY_FLOAT64)))
        goto exit;
    Py_BEGIN_ALLOW_THREADS
    status = rg_cka_layers(ly.views, ly.n_layers, consecutive, debiased, (int)n_threads.v,
                           PyArray_DATA(out), &sample_space, &bad);
    Py_END_ALLOW_THREADS
    char name[64];
    if (status == RG_ERR_NOT_FINITE)
        rg_py_error(PyExc_ValueError, "%s contains NaN or Inf",
                    layer_name(&ly, (Py_ssize_t)bad, name, sizeof name));
    else if (status != RG_OK)
        rg_py_status(status, "cka");
    else
        result = Py_BuildValue("Oi", out, sample_space);
exit:
    layers_clear(&ly);
    Py_XDECREF(out);
    return result;
}

PyMethodDef rg_analysis_methods[] = {
    {"rank", RG_KW(py_rank),
     "rank($module, /, X, measure='erank', center=True, squared=False, tol=-1.0, name='X')"
     "\n--\n\n"
     "(values, route): a measure (or 'spectrum') of every (n, f) matrix of X (..., n, f); "
     "route per matrix: 0 Gram eigenvalues, 1 direct SVD (QR + dgesdd), 2 CholeskyQR2, "
     "3 scaled Cholesky (see rank.h)."},
    {"cka", RG_KW(py_cka),
     "cka($module, /, layers, consecutive=False, debiased=False, names=None, n_threads=None)"
     "\n--\n\n"
     "((n_layers, n_layers) float64, sample_space): linear CKA between 2-D arrays with equal "
     "row counts, on n_threads threads (None: rgflow's count; the same bits for any)."},
    {NULL, NULL, 0, NULL}};
