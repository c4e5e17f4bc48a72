#include "pool.h"

#include "blas.h"

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
/* MXCSR flush-to-zero (bit 15) and denormals-are-zero (bit 6) */
#define RG_FTZ_DAZ 0x8040u
static unsigned flush_subnormals(void)
{
    const unsigned saved = _mm_getcsr();
    _mm_setcsr(saved | RG_FTZ_DAZ);
    return saved;
}
static void restore_fp_mode(unsigned saved) { _mm_setcsr(saved); }
unsigned rg_pool_keep_subnormals(void)
{
    const unsigned saved = _mm_getcsr();
    _mm_setcsr(saved & ~RG_FTZ_DAZ);
    return saved;
}
#else
unsigned rg_pool_keep_subnormals(void) { return 0; }
static unsigned flush_subnormals(void) { return 0; }
static void restore_fp_mode(unsigned saved) { (void)saved; }
#endif

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

/* Spin iterations before a worker sleeps (or the caller blocks): about 0.1 ms. */
#define SPIN 2000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claims and runs items of the current job until none is left. */
static void run_items(rg_pool *p)
{
    const rg_task *tasks = p->tasks;
    int64_t i;
    while ((i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED)) < p->n_items) {
        int t = 0;
        while (i >= tasks[t].n) { i -= tasks[t].n; t++; }
        tasks[t].fn(tasks[t].arg, i);
    }
}

static void *worker(void *arg)
{
    rg_pool *p = arg;
    unsigned seen = 0;
    flush_subnormals(); /* a worker runs nothing but pool items */
    for (;;) {
        for (int s = 0; s < SPIN && LOAD(p->gen) == seen && !LOAD(p->stop); s++) cpu_relax();
        if (LOAD(p->gen) == seen && !LOAD(p->stop)) {
            pthread_mutex_lock(&p->mu);
            while (LOAD(p->gen) == seen && !LOAD(p->stop)) pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (LOAD(p->stop)) return NULL;
        seen = LOAD(p->gen);
        run_items(p);  /* rg_pool_run made OpenBLAS single-threaded (a global setting) */
        if (__atomic_sub_fetch(&p->busy, 1, __ATOMIC_ACQ_REL) == 0) {
            /* under the lock: the caller checks busy under it before it waits */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->idle);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

void rg_pool_init(rg_pool *p, int n_threads)
{
    p->gen = 0;
    p->busy = 0;
    p->stop = 0;
    p->nt = 1;
    p->tasks = NULL;
    p->n_items = 0;
    p->next = 0;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->idle, NULL);
    if (n_threads > RG_POOL_MAX) n_threads = RG_POOL_MAX;
    for (int t = 1; t < n_threads; t++) {
        if (pthread_create(&p->th[t], NULL, worker, p) != 0) break;
        p->nt = t + 1;
    }
}

void rg_pool_destroy(rg_pool *p)
{
    pthread_mutex_lock(&p->mu);
    STORE(p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->nt; t++) pthread_join(p->th[t], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->idle);
    pthread_mutex_destroy(&p->mu);
}

void rg_pool_restore_fp(unsigned saved) { restore_fp_mode(saved); }

void rg_pool_run(rg_pool *p, const rg_task *tasks, int n_tasks)
{
    int64_t total = 0;
    rg_blas_serial();
    const unsigned fp_mode = flush_subnormals();
    for (int t = 0; t < n_tasks; t++) total += tasks[t].n;
    if (!p || p->nt == 1 || total <= 1) {
        for (int t = 0; t < n_tasks; t++)
            for (int64_t i = 0; i < tasks[t].n; i++) tasks[t].fn(tasks[t].arg, i);
        restore_fp_mode(fp_mode);
        return;
    }
    p->tasks = tasks;
    p->n_items = total;
    STORE(p->next, 0);
    STORE(p->busy, p->nt - 1);
    pthread_mutex_lock(&p->mu);
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELEASE); /* publishes the fields above */
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_items(p);
    for (int s = 0; s < SPIN && LOAD(p->busy) > 0; s++) cpu_relax();
    if (LOAD(p->busy) > 0) {
        pthread_mutex_lock(&p->mu);
        while (LOAD(p->busy) > 0) pthread_cond_wait(&p->idle, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    restore_fp_mode(fp_mode);
}

int64_t rg_chunk_count(int64_t n, int64_t min_size, int64_t max_chunks)
{
    int64_t k = min_size > 0 ? n / min_size : n;
    if (k > max_chunks) k = max_chunks;
    return k < 1 ? 1 : k;
}

int64_t rg_chunk_begin(int64_t n, int64_t k, int64_t j, int64_t align)
{
    if (j >= k) return n;
    /* j * n / k without overflow for n < 2^62, k <= 2^10 */
    int64_t b = (n / k) * j + (n % k) * j / k;
    b -= b % align;
    return b;
}

void rg_blas_serial(void)
{
    if (RG_BLAS(openblas_get_num_threads)() != 1) RG_BLAS(openblas_set_num_threads)(1);
}
