/* A small thread pool that runs lists of independent work items.
 *
 * Reproducibility rests on one rule: the caller decides how work is cut into items, from the
 * shapes alone, never from the thread count; every item writes its own outputs and computes
 * them in a fixed order.  Which thread runs which item then cannot change a single bit, so a
 * kernel gives the same result on 1 or 64 threads.  OpenBLAS runs single-threaded inside an
 * item (rg_blas_serial), because its own partition of a GEMM depends on its thread count and,
 * on some kernels (Haswell), changes the rounding.
 *
 * Every item runs with subnormal floats flushed to zero (x86 FTZ and DAZ; the caller's mode is
 * restored when rg_pool_run returns), with a NULL pool too.  The model's kernels produce
 * subnormals from switched-off hidden units (GELU of a pre-activation below about -13, and the
 * products of such tiny values), and a GEMM with subnormal operands runs ~100x slower on x86
 * (125x measured for sgemm; a paper-size training step went from 66 ms to 3-4 s with dead
 * units).  Every thread flushes alike, so results still do not depend on the thread count.
 * Code inside an item that must keep subnormals (CKA's loader copies the caller's data, and
 * DAZ reads a float32 subnormal as 0) switches back with rg_pool_keep_subnormals.
 *
 * Items are claimed dynamically (an atomic counter), so uneven items balance.  Workers spin
 * briefly after each job, then sleep on a condition variable: the per-layer jobs of a training
 * step follow each other within microseconds. */
#ifndef RG_POOL_H
#define RG_POOL_H

#include <pthread.h>
#include <stdint.h>

#define RG_POOL_MAX 64

/* Item i of a task: fn(arg, i) for i in [0, n). */
typedef void (*rg_item_fn)(const void *arg, int64_t i);
typedef struct {
    rg_item_fn fn;
    const void *arg;
    int64_t n;
} rg_task;

typedef struct rg_pool rg_pool;

struct rg_pool {
    pthread_mutex_t mu;
    pthread_cond_t wake, idle;
    unsigned gen;          /* atomic: incremented to publish a job */
    int busy;              /* atomic: workers still inside the current job */
    int stop;              /* atomic */
    int nt;                /* threads including the caller */
    const rg_task *tasks;  /* the current job */
    int64_t n_items;       /* total over tasks */
    int64_t next;          /* atomic: next unclaimed item */
    pthread_t th[RG_POOL_MAX];
};

/* Starts n_threads - 1 workers (capped at RG_POOL_MAX); if the system refuses a thread the
 * pool runs with fewer, which changes speed, never results.  p lives in the caller's memory. */
void rg_pool_init(rg_pool *p, int n_threads);
void rg_pool_destroy(rg_pool *p);

/* Runs every item of tasks[0..n_tasks) and returns when all are done.  p NULL: in order, on
 * the calling thread. */
void rg_pool_run(rg_pool *p, const rg_task *tasks, int n_tasks);

/* Inside an item: IEEE subnormals (flush-to-zero and denormals-are-zero off) until
 * rg_pool_restore_fp(saved).  For items that must read the caller's data exactly: under DAZ a
 * float32 subnormal converts to 0.0 (cka.c's loader).  Every thread then runs such code in
 * the same mode, so results still do not depend on the thread count. */
unsigned rg_pool_keep_subnormals(void);
void rg_pool_restore_fp(unsigned saved);

/* Number of chunks of [0, n) with at least min_size elements each, at most max_chunks (>= 1):
 * a function of the sizes only.  Chunk j of k covers rg_chunk_begin(n, k, j) ..
 * rg_chunk_begin(n, k, j + 1), boundaries rounded to multiples of align. */
int64_t rg_chunk_count(int64_t n, int64_t min_size, int64_t max_chunks);
int64_t rg_chunk_begin(int64_t n, int64_t k, int64_t j, int64_t align);

/* Makes the linked OpenBLAS single-threaded if anything (threadpoolctl, say) changed it. */
void rg_blas_serial(void);

#endif
