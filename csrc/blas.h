/* The one door to BLAS and LAPACK.  Every call goes through RG_BLAS(name) so the same source
 * builds against the scipy-openblas32 wheel (symbols prefixed scipy_) or a system
 * OpenBLAS + LAPACKE (no prefix).  setup.py defines RG_BLAS_SCIPY for the former. */
#ifndef RG_BLAS_H
#define RG_BLAS_H

#if defined(RG_BLAS_SCIPY)
#include "cblas.h"
#include "lapacke.h"
#define RG_BLAS(name) scipy_##name
#define RG_BLAS_PROVIDER "scipy-openblas32 (bundled)"
#else
#include <cblas.h>
#include <lapacke.h>
#define RG_BLAS(name) name
#define RG_BLAS_PROVIDER "system OpenBLAS + LAPACKE"
#endif

#endif
