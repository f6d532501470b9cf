// An experiment for benchmarks/rehearsal.py, not part of oomladder: a cap on a process's live malloc bytes, with
// glibc's own caching kept, so PyTorch's CPU allocator fails with its own error where a device of that size would,
// without giving every freed block back to the kernel (the cost of today's emulation, docs/benchmarks.md).
// Built there with `cc -O2 -shared -fPIC` and loaded with LD_PRELOAD; armed through ctypes after the imports.
// Not handled, as an experiment: valloc/pvalloc, and allocations made before the library loaded.
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stddef.h>
#include <stdatomic.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static _Atomic long live, peak;
static long limit = -1;  // live bytes allowed; -1: no cap

long oomcap_live(void) { return live; }
long oomcap_peak(void) { return peak; }
void oomcap_reset_peak(void) { peak = live; }
void oomcap_arm(long over_now) { limit = live + over_now; }

static int over(size_t n) { return limit >= 0 && live + (long)n > limit; }
static void *took(void *p) {
    if (p) {
        long now = atomic_fetch_add(&live, (long)malloc_usable_size(p)) + (long)malloc_usable_size(p);
        long seen = peak;
        while (now > seen && !atomic_compare_exchange_weak(&peak, &seen, now)) {}
    }
    return p;
}
static void gave(void *p) { if (p) atomic_fetch_sub(&live, (long)malloc_usable_size(p)); }

void *malloc(size_t n) { if (over(n)) { errno = ENOMEM; return 0; } return took(__libc_malloc(n)); }
void *calloc(size_t a, size_t b) { if (over(a * b)) { errno = ENOMEM; return 0; } return took(__libc_calloc(a, b)); }
void free(void *p) { gave(p); __libc_free(p); }
void *realloc(void *p, size_t n) {
    if (over(n)) { errno = ENOMEM; return 0; }
    gave(p);
    void *q = __libc_realloc(p, n);
    if (!q && n) { took(p); return 0; }
    return took(q);
}
void *memalign(size_t a, size_t n) { if (over(n)) { errno = ENOMEM; return 0; } return took(__libc_memalign(a, n)); }
void *aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    if (over(n)) return ENOMEM;
    void *p = took(__libc_memalign(a, n));
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
