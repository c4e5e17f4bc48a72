/* sysconf and its _SC_AVPHYS_PAGES under -std=c99 */
#define _DEFAULT_SOURCE

#include "memory.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The first number of `path` (key NULL), or of its line starting with `key` (in kB, as
 * /proc/meminfo gives it, returned in bytes); -1 if absent. */
static double read_number(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1.0;
    char line[256];
    double v = -1.0;
    size_t klen = key ? strlen(key) : 0;
    while (fgets(line, sizeof line, f)) {
        if (key && strncmp(line, key, klen)) continue;
        char *end;
        double x = strtod(line + klen, &end);
        if (end != line + klen) v = key ? x * 1024.0 : x;  /* meminfo is in kB */
        break;
    }
    fclose(f);
    return v;
}

double rg_available_bytes(void)
{
    double avail = read_number("/proc/meminfo", "MemAvailable:");
    if (avail < 0.0) {
        long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
        if (pages > 0 && size > 0) avail = (double)pages * (double)size;
    }
    double max = read_number("/sys/fs/cgroup/memory.max", NULL);  /* "max" reads as -1 */
    double cur = read_number("/sys/fs/cgroup/memory.current", NULL);
    if (max > 0.0 && cur >= 0.0 && (avail < 0.0 || max - cur < avail))
        avail = max - cur > 0.0 ? max - cur : 0.0;
    return avail;
}

int rg_memory_fits(double bytes, double *avail)
{
    if (!(bytes >= RG_MEM_CHECK_MIN)) return 1;
    *avail = rg_available_bytes();
    return *avail < 0.0 || bytes <= *avail;
}

void *rg_alloc_large(size_t bytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= RG_HUGE_MIN) {
        void *p = NULL;
        /* aligned to 2 MB, so that the kernel can back its whole 2 MB pages with huge pages
         * (where transparent huge pages are on for madvise'd memory): one fault per 2 MB
         * instead of per 4 kB.  The partial page at the end is left out of the advice, so no
         * more memory becomes resident than is touched. */
        const size_t huge = (size_t)2 << 20;
        if (posix_memalign(&p, huge, bytes) != 0) return NULL;
        madvise(p, bytes / huge * huge, MADV_HUGEPAGE);  /* advice only: failure changes
                                                           * nothing */
        return p;
    }
#endif
    return malloc(bytes);
}
