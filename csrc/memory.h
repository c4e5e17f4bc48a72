/* How much memory a request may still take: plain C, no Python.  The bindings turn a "no" into
 * rgflow.MemoryLimitError before they allocate. */
#ifndef RG_MEMORY_H
#define RG_MEMORY_H

#include <stddef.h>

/* Below this a request is not worth reading /proc for; malloc failure still raises. */
#define RG_MEM_CHECK_MIN (64.0 * 1024 * 1024)

/* Bytes that can still be allocated without swapping or the OOM killer: MemAvailable (Linux),
 * else free physical pages, capped by a cgroup v2 limit; negative when unknown.  Overcommit
 * lets malloc succeed far beyond this, so checking up front is the only way to fail cleanly. */
double rg_available_bytes(void);

/* 1 if `bytes` (a double, so products of sizes cannot overflow) may be allocated now: below
 * RG_MEM_CHECK_MIN, within the available memory, or when that is unknown.  Else 0, with the
 * available bytes in *avail. */
int rg_memory_fits(double bytes, double *avail);

/* Workspaces of at least this many bytes are asked to be backed by huge pages. */
#define RG_HUGE_MIN ((size_t)16 << 20)

/* malloc for a large workspace (freed with free): from RG_HUGE_MIN bytes on, aligned to 2 MB
 * and advised (Linux madvise) to be backed by transparent huge pages, so that first touching
 * it costs one page fault per 2 MB instead of per 4 kB (a fresh 137 MB CKA workspace: ~35,000
 * faults, ~10% of the call).  NULL on failure. */
void *rg_alloc_large(size_t bytes);

#endif
