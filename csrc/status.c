#include "status.h"

const char *rg_strerror(int status)
{
    switch (status) {
    case RG_OK: return "ok";
    case RG_ERR_NOMEM: return "out of memory";
    case RG_ERR_VALUE: return "invalid value";
    case RG_ERR_LAPACK: return "LAPACK failure";
    case RG_ERR_ZERO_PROB: return "observed tokens have probability zero under the chain";
    case RG_ERR_NOT_FINITE: return "non-finite value";
    case RG_ERR_REDUCIBLE: return "stationary law is not unique";
    default: return "unknown error";
    }
}
