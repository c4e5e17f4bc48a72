/* Status codes shared by every kernel.  Kernels never print or exit: they return one of these
 * and fill caller-provided detail slots; the bindings (rg_py_status in py_convert.c) turn them
 * into Python exceptions. */
#ifndef RG_STATUS_H
#define RG_STATUS_H

enum {
    RG_OK = 0,
    RG_ERR_NOMEM = -1,       /* a workspace allocation failed */
    RG_ERR_VALUE = -2,       /* an argument is outside its domain (detail says which) */
    RG_ERR_LAPACK = -3,      /* LAPACK reported failure (info in detail) */
    RG_ERR_ZERO_PROB = -4,   /* observed tokens have probability zero under the chain */
    RG_ERR_NOT_FINITE = -5,  /* NaN or Inf met where a finite number is required */
    RG_ERR_REDUCIBLE = -6    /* stationary law not unique */
};

const char *rg_strerror(int status);

#endif
