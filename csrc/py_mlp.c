/* Bindings of the model (mlp.h) and training (train.h) kernels.
 *
 * The model is Python-owned: float32 arenas (params, grads, AdamW m and v) and a uint8
 * workspace, passed to stateless kernels together with the config tuple
 * (V, L, d, m, K, block_ln). */
#include "py_convert.h"

#include <math.h>

#include "chain.h"
#include "mlp.h"
#include "pool.h"
#include "status.h"
#include "train.h"

/* ---- converters --------------------------------------------------------------------------- */

/* The arguments of the model entries, filled left to right by the converters below. */
typedef struct {
    rg_mlp_config c;
    int64_t n_params;
    rg_train_arenas ar;      /* borrowed data pointers (params alone unless training) */
    void *ws;                /* borrowed */
    rg_array tokens, targets, mask;
} model;
#define MODEL(tokens, targets)                                                     \
    {{0, 0, 0, 0, 0, 0}, 0, {NULL, NULL, NULL, NULL}, NULL,                        \
     RG_ARRAY(tokens, 2, "of shape (n, length)"), RG_ARRAY(targets, 2, "of shape (n, length)"), \
     RG_ARRAY("mask", 2, "of shape (n, length)")}

static void model_clear(model *M)
{
    Py_CLEAR(M->tokens.a);
    Py_CLEAR(M->targets.a);
    Py_CLEAR(M->mask.a);
}

static int config_conv(PyObject *obj, void *arg)
{
    model *M = arg;
    rg_size V = RG_SIZE("n_states", 2, RG_MAX_STATES), L = RG_SIZE("length", 1, INT64_MAX);
    rg_size d = RG_SIZE("width", 1, INT64_MAX), m = RG_SIZE("hidden", 1, INT64_MAX);
    rg_size K = RG_SIZE("depth", 0, INT64_MAX);
    int block_ln;
    if (!PyTuple_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "config must be a tuple (V, L, d, m, K, block_ln)");
        return 0;
    }
    if (!PyArg_ParseTuple(obj, "O&O&O&O&O&p;config must be (V, L, d, m, K, block_ln)",
                          rg_size_conv, &V, rg_size_conv, &L, rg_size_conv, &d, rg_size_conv,
                          &m, rg_size_conv, &K, &block_ln))
        return 0;
    M->c = (rg_mlp_config){V.v, L.v, d.v, m.v, K.v, block_ln};
    if (rg_mlp_check_config(&M->c, &M->n_params) == RG_OK) return 1;
    rg_py_error(PyExc_ValueError, "model too large: length * width = %lld x %lld, hidden = "
                "%lld, depth = %lld overflow the parameter arena", (long long)L.v,
                (long long)d.v, (long long)m.v, (long long)K.v);
    return 0;
}

/* A float32 1-D C-contiguous array of exactly n elements, writeable if asked; never copied
 * (the kernels update it in place).  A borrowed pointer to its data, or NULL. */
static float *arena_of(PyObject *obj, const char *name, int64_t n, int write)
{
    if (!PyArray_Check(obj)) {
        rg_py_error(PyExc_TypeError, "%s must be a numpy.ndarray, got %s", name,
                    Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    char buf[160];
    rg_py_describe(a, buf, sizeof buf);
    if (PyArray_TYPE(a) != NPY_FLOAT32)
        rg_py_error(PyExc_TypeError, "%s must be a float32 array, got a %s", name, buf);
    else if (PyArray_NDIM(a) != 1 || PyArray_DIM(a, 0) != n || !PyArray_IS_C_CONTIGUOUS(a) ||
             !PyArray_ISALIGNED(a))
        rg_py_error(PyExc_ValueError, "%s must be a C-contiguous aligned 1-D array of %lld "
                    "elements, got a %s", name, (long long)n, buf);
    else if (write && !PyArray_ISWRITEABLE(a))
        rg_py_error(PyExc_ValueError, "%s must be writeable", name);
    else
        return PyArray_DATA(a);
    return NULL;
}

static int params_conv(PyObject *obj, void *arg) /* read only */
{
    model *M = arg;
    return (M->ar.params = arena_of(obj, "params", M->n_params, 0)) != NULL;
}

static int params_out_conv(PyObject *obj, void *arg)
{
    model *M = arg;
    return (M->ar.params = arena_of(obj, "params", M->n_params, 1)) != NULL;
}

static int grads_conv(PyObject *obj, void *arg)
{
    model *M = arg;
    return (M->ar.grads = arena_of(obj, "grads", M->n_params, 1)) != NULL;
}

/* (params, grads, adam_m, adam_v): four distinct writeable arenas. */
static int arenas_conv(PyObject *obj, void *arg)
{
    model *M = arg;
    rg_train_arenas *ar = &M->ar;
    PyObject *p, *g, *am, *av;
    if (!PyTuple_Check(obj)) {
        rg_py_error(PyExc_TypeError, "arenas must be a tuple (params, grads, adam_m, adam_v), "
                    "got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    if (!PyArg_ParseTuple(obj, "OOOO;arenas must be (params, grads, adam_m, adam_v)", &p, &g,
                          &am, &av))
        return 0;
    if (!(ar->params = arena_of(p, "params", M->n_params, 1)) ||
        !(ar->grads = arena_of(g, "grads", M->n_params, 1)) ||
        !(ar->adam_m = arena_of(am, "adam_m", M->n_params, 1)) ||
        !(ar->adam_v = arena_of(av, "adam_v", M->n_params, 1)))
        return 0;
    if (ar->params != ar->grads && ar->params != ar->adam_m && ar->params != ar->adam_v &&
        ar->grads != ar->adam_m && ar->grads != ar->adam_v && ar->adam_m != ar->adam_v)
        return 1;
    PyErr_SetString(PyExc_ValueError, "params, grads, adam_m and adam_v must be distinct");
    return 0;
}

/* The uint8 workspace, large enough for batches of `batch` sequences (a borrowed pointer). */
static int workspace_of(model *M, PyObject *obj, int64_t batch)
{
    const int64_t need = rg_mlp_workspace_bytes(&M->c, batch);
    PyArrayObject *a = (PyArrayObject *)obj;
    M->ws = NULL;
    if (batch > RG_MLP_MAX_DIM / M->c.L) /* B * L rows go to sgemm as a 32-bit int */
        rg_py_error(PyExc_ValueError, "batch * length = %lld x %lld exceeds 2**31 - 1",
                    (long long)batch, (long long)M->c.L);
    else if (need < 0)
        rg_py_error(PyExc_ValueError, "workspace for batch %lld overflows", (long long)batch);
    else if (!PyArray_Check(obj) || PyArray_TYPE(a) != NPY_UINT8)
        PyErr_SetString(PyExc_TypeError, "workspace must be a uint8 numpy.ndarray");
    else if (PyArray_NDIM(a) != 1 || !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISWRITEABLE(a) ||
             PyArray_DIM(a, 0) < need)
        rg_py_error(PyExc_ValueError, "workspace must be a writeable C-contiguous 1-D array of "
                    "at least %lld bytes for batch %lld", (long long)need, (long long)batch);
    else
        M->ws = PyArray_DATA(a);
    return M->ws ? 0 : -1;
}

/* Token ids (n, L) into s, int32 in [0, s->hi], copied only if needed; n = rows >= 1 (any if
 * rows < 0). */
static int token_ids(PyObject *obj, rg_array *s, const rg_mlp_config *c, int64_t rows)
{
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_Check(obj) && PyArray_NDIM(a) == 2 && PyArray_DIM(a, 1) != c->L) {
        /* before the conversion: a wrong shape must not cost a copy */
        rg_py_error(PyExc_ValueError, "%s must have shape (n, %lld), got (%ld, %ld)", s->name,
                    (long long)c->L, (long)PyArray_DIM(a, 0), (long)PyArray_DIM(a, 1));
        return 0;
    }
    if (!rg_int32_conv(obj, s)) return 0;
    if (!s->a) return 1; /* an optional None */
    const npy_intp n = PyArray_DIM(s->a, 0), L = PyArray_DIM(s->a, 1);
    if (L == c->L && (rows < 0 || n == rows) && n >= 1) return 1;
    rg_py_error(PyExc_ValueError, "%s must have shape (%s, %lld), got (%ld, %ld)", s->name,
                rows >= 0 ? "n" : "n >= 1", (long long)c->L, (long)n, (long)L);
    return 0;
}

static int tokens_conv(PyObject *obj, void *arg) /* the model's input, ids in [0, V] */
{
    model *M = arg;
    M->tokens.hi = M->c.V;
    return token_ids(obj, &M->tokens, &M->c, -1);
}

static int targets_conv(PyObject *obj, void *arg) /* true tokens, in [0, V) */
{
    model *M = arg;
    M->targets.hi = M->c.V - 1;
    return token_ids(obj, &M->targets, &M->c, PyArray_DIM(M->tokens.a, 0));
}

static int mask_conv(PyObject *obj, void *arg) /* (n, L), n the tokens' rows */
{
    model *M = arg;
    rg_array *s = &M->mask;
    if (!rg_bool_conv(obj, s)) return 0;
    if (!s->a) return 1; /* an optional None */
    const int64_t n = PyArray_DIM(M->tokens.a, 0), L = M->c.L;
    if (PyArray_DIM(s->a, 0) == n && PyArray_DIM(s->a, 1) == L) return 1;
    rg_py_error(PyExc_ValueError, "mask must have shape (%lld, %lld), got (%ld, %ld)",
                (long long)n, (long long)L, (long)PyArray_DIM(s->a, 0),
                (long)PyArray_DIM(s->a, 1));
    return 0;
}

/* 0 if every key of dict is in kwlist; else -1 with TypeError naming the first other one. */
static int known_keys(PyObject *dict, char **kwlist)
{
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        int known = 0;
        for (char **k = kwlist; *k && !known; k++)
            known = PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, *k) == 0;
        if (!known) {
            PyErr_Format(PyExc_TypeError, "options has an unknown key %R", key);
            return -1;
        }
    }
    return 0;
}

/* AdamW and data options: a dict with exactly the keys betas, eps, weight_decay,
 * max_grad_norm, mask_rate and mask_span, into an rg_train_opts. */
static int options_conv(PyObject *obj, void *out)
{
    static char *kwlist[] = {"betas", "eps", "weight_decay", "max_grad_norm", "mask_rate",
                             "mask_span", NULL};
    rg_real b1 = RG_REAL("betas[0]", 0.0, 1.0, 0, 1), b2 = RG_REAL("betas[1]", 0.0, 1.0, 0, 1);
    rg_real eps = RG_REAL("eps", 0.0, INFINITY, 1, 1);
    rg_real wd = RG_REAL("weight_decay", 0.0, INFINITY, 0, 1);
    rg_real clip = RG_REAL("max_grad_norm", -INFINITY, INFINITY, 1, 1);
    rg_real rate = RG_REAL("mask_rate", 0.0, 1.0, 0, 0);
    rg_size span = RG_SIZE("mask_span", 1, INT64_MAX);
    if (!PyDict_Check(obj)) {
        rg_py_error(PyExc_TypeError, "options must be a dict, got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    if (known_keys(obj, kwlist) < 0) return 0;
    PyObject *none = PyTuple_New(0);
    int ok = none && PyArg_ParseTupleAndKeywords(
                         none, obj, "(O&O&)O&O&O&O&O&:options", kwlist, rg_real_conv, &b1,
                         rg_real_conv, &b2, rg_real_conv, &eps, rg_real_conv, &wd,
                         rg_real_conv, &clip, rg_real_conv, &rate, rg_size_conv, &span);
    Py_XDECREF(none);
    if (ok) *(rg_train_opts *)out = (rg_train_opts){{b1.v, b2.v, eps.v, wd.v}, clip.v, rate.v,
                                                    span.v};
    return ok;
}

/* ---- wrappers ----------------------------------------------------------------------------- */

/* (name, shape, offset, size) of a tensor of the layout. */
static PyObject *tensor_tuple(const rg_mlp_tensor *t)
{
    PyObject *shape = t->ndim == 1 ? Py_BuildValue("(L)", (long long)t->shape[0])
                                   : Py_BuildValue("(LL)", (long long)t->shape[0],
                                                   (long long)t->shape[1]);
    if (!shape) return NULL;
    return Py_BuildValue("sNLL", t->name, shape, (long long)t->offset, (long long)t->size);
}

static PyObject *py_mlp_layout(PyObject *self, PyObject *args)
{
    model M = MODEL("tokens", "targets");
    PyObject *tensors = NULL;
    if (!PyArg_ParseTuple(args, "O&:mlp_layout", config_conv, &M)) return NULL;
    const int64_t nt = rg_mlp_n_tensors(&M.c);
    if (!(tensors = PyTuple_New((Py_ssize_t)nt))) return NULL;
    for (int64_t i = 0; i < nt; i++) {
        rg_mlp_tensor t;
        rg_mlp_tensor_at(&M.c, i, &t);
        PyObject *row = tensor_tuple(&t);
        if (!row) {
            Py_DECREF(tensors);
            return NULL;
        }
        PyTuple_SET_ITEM(tensors, (Py_ssize_t)i, row);
    }
    return Py_BuildValue("LN", (long long)M.n_params, tensors);
}

static PyObject *py_mlp_workspace_bytes(PyObject *self, PyObject *args)
{
    model M = MODEL("tokens", "targets");
    rg_size batch = RG_SIZE("batch", 1, INT64_MAX);
    if (!PyArg_ParseTuple(args, "O&O&:mlp_workspace_bytes", config_conv, &M, rg_size_conv,
                          &batch))
        return NULL;
    int64_t bytes = rg_mlp_workspace_bytes(&M.c, batch.v);
    if (bytes >= 0 && bytes <= (int64_t)PY_SSIZE_T_MAX) return PyLong_FromLongLong(bytes);
    rg_py_error(PyExc_ValueError, "workspace for batch %lld is too large", (long long)batch.v);
    return NULL;
}

static PyObject *py_mlp_init(PyObject *self, PyObject *args)
{
    model M = MODEL("tokens", "targets");
    uint64_t seed;
    if (!PyArg_ParseTuple(args, "O&O&O&:mlp_init", config_conv, &M, params_out_conv, &M,
                          rg_seed_conv, &seed))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rg_mlp_init(&M.c, M.ar.params, seed);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* The outputs of mlp_forward (checked against the memory available). */
typedef struct {
    PyArrayObject *logits;  /* (n, L, V) or NULL */
    PyArrayObject *stream;  /* (K + 1, n, L, d) or NULL */
} forward_out;

/* After parsing: targets and mask come together; the outputs asked for, for M's n rows. */
static int forward_outputs(const model *M, int want_logits, int want_stream, forward_out *o)
{
    const rg_mlp_config *c = &M->c;
    const int64_t n = PyArray_DIM(M->tokens.a, 0), L = c->L, D = c->L * c->d;
    if (!M->targets.a != !M->mask.a) {
        PyErr_SetString(PyExc_TypeError, "targets and mask must be given together");
        return -1;
    }
    if (want_logits &&
        (rg_py_check_product(n * L, c->V, 4, "n * length * n_states") < 0 ||
         rg_py_check_memory((double)n * L * c->V * 4.0, "logits of tokens (n * length * "
                            "n_states float32)") < 0 ||
         !(o->logits = rg_py_empty(3, (npy_intp[]){n, L, c->V}, NPY_FLOAT32))))
        return -1;
    if (want_stream &&
        (rg_py_check_product(n * D, c->K + 1, 4, "(depth + 1) * n * length * width") < 0 ||
         rg_py_check_memory((double)n * D * (c->K + 1) * 4.0, "residual stream of tokens "
                            "((depth + 1) * n * length * width float32)") < 0 ||
         !(o->stream = rg_py_empty(4, (npy_intp[]){c->K + 1, n, L, c->d}, NPY_FLOAT32))))
        return -1;
    return 0;
}

/* The forward over all rows of M's tokens in chunks of `batch` rows (the workspace's
 * capacity), on a pool of rg_py_threads(); without the GIL. */
static int forward_chunks(const model *M, int64_t batch, forward_out *o, double *nll,
                          int64_t *count)
{
    const rg_mlp_config *c = &M->c;
    const int64_t n = PyArray_DIM(M->tokens.a, 0), L = c->L, D = c->L * c->d;
    const int32_t *x = PyArray_DATA(M->tokens.a);
    const int32_t *targets = M->targets.a ? PyArray_DATA(M->targets.a) : NULL;
    const uint8_t *mask = M->mask.a ? PyArray_DATA(M->mask.a) : NULL;
    float *logits = o->logits ? PyArray_DATA(o->logits) : NULL;
    float *stream = o->stream ? PyArray_DATA(o->stream) : NULL;
    int status = RG_OK;
    rg_pool pool;
    rg_pool_init(&pool, rg_py_threads());
    for (int64_t i0 = 0; i0 < n && status == RG_OK; i0 += batch) {
        int64_t B = n - i0 < batch ? n - i0 : batch, cnt = 0;
        double s = 0.0;
        status = rg_mlp_forward(&pool, c, M->ar.params, M->ws, B, x + i0 * L,
                                logits ? logits + i0 * L * c->V : NULL,
                                stream ? stream + i0 * D : NULL, n * D,
                                targets ? targets + i0 * L : NULL, mask ? mask + i0 * L : NULL,
                                &s, &cnt);
        *nll += s;
        *count += cnt;
    }
    rg_pool_destroy(&pool);
    return status;
}

static PyObject *py_mlp_forward(PyObject *self, PyObject *args)
{
    model M = MODEL("tokens", "targets");
    rg_size batch = RG_SIZE("batch", 1, INT64_MAX);
    forward_out out = {NULL, NULL};
    PyObject *ws, *result = NULL;
    int want_logits, want_stream, status;
    double nll = 0.0;
    int64_t count = 0;
    M.targets.optional = M.mask.optional = 1;
    if (!PyArg_ParseTuple(args, "O&O&OO&O&pp|O&O&:mlp_forward", config_conv, &M, params_conv,
                          &M, &ws, rg_size_conv, &batch, tokens_conv, &M, &want_logits,
                          &want_stream, targets_conv, &M, mask_conv, &M) ||
        workspace_of(&M, ws, batch.v) < 0 ||
        forward_outputs(&M, want_logits, want_stream, &out) < 0)
        goto exit;
    Py_BEGIN_ALLOW_THREADS
    status = forward_chunks(&M, batch.v, &out, &nll, &count);
    Py_END_ALLOW_THREADS
    if (status != RG_OK)
        rg_py_status(status, "mlp_forward");
    else
        result = Py_BuildValue("OOdL", out.logits ? (PyObject *)out.logits : Py_None,
                               out.stream ? (PyObject *)out.stream : Py_None, nll,
                               (long long)count);
exit:
    model_clear(&M);
    Py_XDECREF(out.logits);
    Py_XDECREF(out.stream);
    return result;
}

/* Forward and backward over all n rows of M on a pool; without the GIL. */
static int gradients(const model *M, int64_t n, double *nll, int64_t *count)
{
    const int32_t *x = PyArray_DATA(M->tokens.a), *targets = PyArray_DATA(M->targets.a);
    const uint8_t *mask = PyArray_DATA(M->mask.a);
    rg_pool pool;
    rg_pool_init(&pool, rg_py_threads());
    int status = rg_mlp_forward(&pool, &M->c, M->ar.params, M->ws, n, x, NULL, NULL, 0, targets,
                                mask, nll, count);
    if (status == RG_OK)
        status = rg_mlp_backward(&pool, &M->c, M->ar.params, M->ar.grads, M->ws, n, x, targets,
                                 mask, *count);
    rg_pool_destroy(&pool);
    return status;
}

/* The number of masked positions of M's mask. */
static int64_t n_masked(const model *M)
{
    const uint8_t *mask = PyArray_DATA(M->mask.a);
    int64_t count = 0;
    for (npy_intp i = 0; i < PyArray_SIZE(M->mask.a); i++) count += mask[i] != 0;
    return count;
}

static PyObject *py_mlp_gradients(PyObject *self, PyObject *args)
{
    model M = MODEL("masked_tokens", "tokens");
    PyObject *ws, *result = NULL;
    double nll = 0.0;
    int64_t count = 0;
    int status;
    if (!PyArg_ParseTuple(args, "O&O&O&OO&O&O&:mlp_gradients", config_conv, &M, params_conv,
                          &M, grads_conv, &M, &ws, tokens_conv, &M, targets_conv, &M,
                          mask_conv, &M) ||
        workspace_of(&M, ws, PyArray_DIM(M.tokens.a, 0)) < 0)
        goto exit;
    if (n_masked(&M) == 0) {
        PyErr_SetString(PyExc_ValueError, "mask hides no token: the loss over masked "
                        "positions is undefined");
        goto exit;
    }
    Py_BEGIN_ALLOW_THREADS
    status = gradients(&M, PyArray_DIM(M.tokens.a, 0), &nll, &count);
    Py_END_ALLOW_THREADS
    if (status != RG_OK)
        rg_py_status(status, "mlp_gradients");
    else
        result = PyFloat_FromDouble(nll / (double)count);
exit:
    model_clear(&M);
    return result;
}

/* The training batch's arrays: tokens, masked (int32) and mask (bool), each (B, L). */
static int batch_arrays(int64_t B, int64_t L, PyArrayObject *out[3])
{
    if (rg_py_check_product(B, L, 4, "batch * length") < 0 ||
        rg_py_check_memory(9.0 * (double)B * (double)L, "batch * length tokens and mask") < 0)
        return -1;
    for (int i = 0; i < 3; i++)
        if (!(out[i] = rg_py_empty(2, (npy_intp[]){B, L},
                                                          i < 2 ? NPY_INT32 : NPY_BOOL)))
            return -1;
    return 0;
}

static PyObject *py_mlp_train_batch(PyObject *self, PyObject *args)
{
    rg_chain_arg ch = RG_CHAIN_ARG;
    rg_size step = RG_SIZE("step", 0, UINT32_MAX), B = RG_SIZE("batch", 1, UINT32_MAX);
    rg_size L = RG_SIZE("length", 1, INT64_MAX), span = RG_SIZE("mask_span", 1, INT64_MAX);
    rg_real rate = RG_REAL("mask_rate", 0.0, 1.0, 0, 0);
    PyArrayObject *out[3] = {NULL, NULL, NULL};
    PyObject *result = NULL;
    rg_source src;
    uint64_t seed, *thr = NULL;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&O&O&O&O&:mlp_train_batch", rg_transition_conv, &ch,
                          rg_stationary_conv, &ch, rg_emission_conv, &ch, rg_seed_conv, &seed,
                          rg_size_conv, &step, rg_size_conv, &B, rg_size_conv, &L,
                          rg_real_conv, &rate, rg_size_conv, &span) ||
        batch_arrays(B.v, L.v, out) < 0 || !(thr = rg_py_source(&ch, &src)))
        goto exit;
    Py_BEGIN_ALLOW_THREADS
    rg_train_batch(&src, L.v, B.v, seed, (uint64_t)step.v, rate.v, span.v,
                   PyArray_DATA(out[0]), PyArray_DATA(out[1]), PyArray_DATA(out[2]));
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("OOO", out[0], out[1], out[2]);
exit:
    PyMem_Free(thr);
    rg_chain_arg_clear(&ch);
    for (int i = 0; i < 3; i++) Py_XDECREF(out[i]);
    return result;
}

/* The arguments of mlp_train_steps besides the model's. */
typedef struct {
    rg_size batch, step0;
    rg_chain_arg chain;
    uint64_t seed;
    rg_array lrs;
    rg_train_opts opts;
    int64_t k;  /* steps: the length of lrs */
} train_args;
#define TRAIN_ARGS                                                                         \
    {RG_SIZE("batch_size", 1, UINT32_MAX), RG_SIZE("step0", 0, UINT32_MAX), RG_CHAIN_ARG, 0, \
     RG_ARRAY("lrs", 1, "of shape (k,)"), {{0, 0, 0, 0}, 0, 0, 0}, 0}

/* What depends on several arguments: the chain's tokens, the workspace for the batch, the
 * range of steps and the learning rates. */
static int train_checks(model *M, train_args *T, PyObject *ws)
{
    const double *lr = PyArray_DATA(T->lrs.a);
    T->k = PyArray_DIM(T->lrs.a, 0);
    if (T->chain.n_tokens != M->c.V) {
        rg_py_error(PyExc_ValueError, "the task has %lld tokens but the model has n_states = "
                    "%lld", (long long)T->chain.n_tokens, (long long)M->c.V);
        return -1;
    }
    if (workspace_of(M, ws, T->batch.v) < 0) return -1;
    for (int64_t i = 0; i < T->k; i++)
        if (lr[i] < 0.0) {
            rg_py_error(PyExc_ValueError, "lrs[%lld] = %.17g is negative", (long long)i, lr[i]);
            return -1;
        }
    if (T->step0.v + T->k <= (int64_t)UINT32_MAX) return 0;
    rg_py_error(PyExc_ValueError, "steps must stay below 2**32, got step0 = %lld, k = %lld",
                (long long)T->step0.v, (long long)T->k);
    return -1;
}

/* The k steps on a pool of rg_py_threads(); without the GIL. */
static int train_run(const model *M, const train_args *T, const rg_source *src,
                     double *losses, int64_t *done, int *bad)
{
    rg_pool pool;
    rg_pool_init(&pool, rg_py_threads());
    int status = rg_train_steps(&pool, &M->c, &M->ar, M->ws, T->batch.v, src, T->seed,
                                (uint64_t)T->step0.v, T->k, PyArray_DATA(T->lrs.a), &T->opts,
                                losses, done, bad);
    rg_pool_destroy(&pool);
    return status;
}

static PyObject *py_mlp_train_steps(PyObject *self, PyObject *args)
{
    model M = MODEL("tokens", "targets");
    train_args T = TRAIN_ARGS;
    PyObject *ws, *result = NULL;
    PyArrayObject *losses = NULL;
    rg_source src;
    uint64_t *thr = NULL;
    int64_t done = 0;
    int bad = 0, status;
    if (!PyArg_ParseTuple(args, "O&O&OO&O&O&O&O&O&O&O&:mlp_train_steps", config_conv, &M,
                          arenas_conv, &M, &ws, rg_size_conv, &T.batch, rg_transition_conv,
                          &T.chain, rg_stationary_conv, &T.chain, rg_emission_conv, &T.chain,
                          rg_seed_conv, &T.seed, rg_size_conv, &T.step0, rg_float64_conv,
                          &T.lrs, options_conv, &T.opts) ||
        train_checks(&M, &T, ws) < 0 || !(thr = rg_py_source(&T.chain, &src)) ||
        !(losses = rg_py_zeros(1, (npy_intp[]){T.k}, NPY_FLOAT64)))
        goto exit;
    Py_BEGIN_ALLOW_THREADS
    status = train_run(&M, &T, &src, PyArray_DATA(losses), &done, &bad);
    Py_END_ALLOW_THREADS
    if (status == RG_OK || status == RG_ERR_NOT_FINITE) /* bad says which and where */
        result = Py_BuildValue("OLi", losses, (long long)done, bad);
    else
        rg_py_status(status, "mlp_train_steps");
exit:
    PyMem_Free(thr);
    rg_chain_arg_clear(&T.chain);
    Py_XDECREF(T.lrs.a);
    Py_XDECREF(losses);
    return result;
}

PyMethodDef rg_mlp_methods[] = {
    {"mlp_layout", py_mlp_layout, METH_VARARGS,
     "mlp_layout($module, config, /)\n--\n\n"
     "(n_params, ((state_dict name, shape, offset, size), ...)): the arena's layout table."},
    {"mlp_workspace_bytes", py_mlp_workspace_bytes, METH_VARARGS,
     "mlp_workspace_bytes($module, config, batch, /)\n--\n\n"
     "Bytes of workspace for batches of up to `batch` sequences."},
    {"mlp_init", py_mlp_init, METH_VARARGS,
     "mlp_init($module, config, params, seed, /)\n--\n\n"
     "Reproducible PyTorch-default initialisation of params, in place."},
    {"mlp_forward", py_mlp_forward, METH_VARARGS,
     "mlp_forward($module, config, params, workspace, batch, tokens, want_logits, want_stream, "
     "targets=None, mask=None, /)\n--\n\n"
     "(logits | None, stream | None, nll_sum, count), in chunks of `batch` rows."},
    {"mlp_gradients", py_mlp_gradients, METH_VARARGS,
     "mlp_gradients($module, config, params, grads, workspace, masked_tokens, tokens, mask, /)"
     "\n--\n\n"
     "Mean masked cross-entropy of one batch; its gradient overwrites grads."},
    {"mlp_train_batch", py_mlp_train_batch, METH_VARARGS,
     "mlp_train_batch($module, transition, stationary, emission, seed, step, batch, length, "
     "mask_rate, mask_span, /)\n--\n\n"
     "(tokens, masked, mask), each (batch, length): the batch of training step `step`."},
    {"mlp_train_steps", py_mlp_train_steps, METH_VARARGS,
     "mlp_train_steps($module, config, arenas, workspace, batch_size, transition, stationary, "
     "emission, seed, step0, lrs, options, /)\n--\n\n"
     "(losses (k,), n_done, bad): k = len(lrs) fused AdamW steps from step step0.  arenas: "
     "(params, grads, adam_m, adam_v); options: dict(betas, eps, weight_decay, max_grad_norm, "
     "mask_rate, mask_span).  bad: 0 ok, 1 non-finite loss at step step0 + n_done (not "
     "applied), 2 non-finite parameter after step step0 + n_done - 1."},
    {NULL, NULL, 0, NULL}};
