/* rgflow._core: the module table (the domain tables of py_chain.c, py_mlp.c, py_analysis.c and
 * py_runtime.c, on the converter layer of py_convert.h) and its init. */
#define RG_PY_IMPORT_ARRAY
#include "py_convert.h"

#include "chain.h"
#include "pool.h"

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_core",
    .m_doc = "rgflow's C compute core.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__core(void)
{
    PyMethodDef *tables[] = {rg_chain_methods, rg_mlp_methods, rg_analysis_methods,
                             rg_runtime_methods};
    import_array();
    rg_blas_serial(); /* rgflow's pool owns the parallelism (pool.h) */
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++)
        if (PyModule_AddFunctions(m, tables[i]) < 0) goto fail;
    if (rg_py_add_errors(m) < 0 || PyModule_AddIntConstant(m, "MAX_STATES", RG_MAX_STATES) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
