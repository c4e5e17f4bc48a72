/* Bindings of the runtime: the BLAS in use, the pool's thread count, memory bounds. */
#include "py_convert.h"

#include "blas.h"
#include "memory.h"
#include "pool.h"

/* Threads of rgflow's pool for the model kernels (set from Python at import; results do not
 * depend on it).  OpenBLAS itself always runs single-threaded (see pool.h).  Read by kernels
 * without the GIL while set_num_threads may write it: atomic accesses. */
static int compute_threads = 1;

int rg_py_threads(void)
{
    return __atomic_load_n(&compute_threads, __ATOMIC_RELAXED);
}

static PyObject *py_blas_info(PyObject *self, PyObject *noargs)
{
    return Py_BuildValue("sssi", RG_BLAS_PROVIDER, RG_BLAS(openblas_get_config)(),
                         RG_BLAS(openblas_get_corename)(), rg_py_threads());
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg)
{
    rg_size n = RG_SIZE("n_threads", 1, RG_POOL_MAX);
    if (!rg_size_conv(arg, &n)) return NULL;
    int before = __atomic_exchange_n(&compute_threads, (int)n.v, __ATOMIC_RELAXED);
    return PyLong_FromLong(before);
}

static PyObject *py_check_memory(PyObject *self, PyObject *args)
{
    double bytes;
    const char *what;
    if (!PyArg_ParseTuple(args, "ds:check_memory", &bytes, &what)) return NULL;
    if (rg_py_check_memory(bytes, what) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_available_memory(PyObject *self, PyObject *noargs)
{
    return PyFloat_FromDouble(rg_available_bytes());
}

PyMethodDef rg_runtime_methods[] = {
    {"blas_info", py_blas_info, METH_NOARGS,
     "blas_info($module, /)\n--\n\n"
     "(provider, OpenBLAS config string, OpenBLAS core name, rgflow's pool threads)."},
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads($module, n, /)\n--\n\n"
     "Set the threads of the model kernels' pool; returns the previous count."},
    {"check_memory", py_check_memory, METH_VARARGS,
     "check_memory($module, nbytes, what, /)\n--\n\n"
     "Raise MemoryLimitError naming `what` if nbytes (>= 64 MiB) exceed the memory available "
     "now."},
    {"available_memory", py_available_memory, METH_NOARGS,
     "available_memory($module, /)\n--\n\n"
     "Bytes available now (MemAvailable, cgroup-capped), -1 if unknown."},
    {NULL, NULL, 0, NULL}};
