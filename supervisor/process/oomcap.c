// `--cpu-cap allocator`: a cap on a process's live malloc bytes, so PyTorch's CPU allocator fails with its own
// "DefaultCPUAllocator: can't allocate memory" where a device of that size would. glibc's own caching is kept:
// capping the address space instead makes every freed block go back to the kernel, which costs 1.2-1.6x
// (docs/benchmarks.md, "The CPU rehearsal's own cost"). Built by process/allocator.py, loaded with LD_PRELOAD,
// and armed through ctypes by worker/hooks/memcap.py once the frameworks are imported. Until armed it only counts.
//
// What it refuses: an aligned allocation over the cap, which is what PyTorch's CPU allocator makes for every tensor
// (posix_memalign), and a file mapped in over it. Plain malloc, the interpreter's and the libraries' own, is
// counted but never refused: on a device, the host's memory is not the device's, and the program's handler of the
// OOM (classify it, save a checkpoint) must be able to run when the device is full.
//
// What it counts: each block's usable size, as a device's allocator counts what it has handed out; and each file
// mapped readable into memory by the program's libraries, because from_pretrained keeps safetensors weights as
// views of the mapped file on a CPU, where a GPU would copy them into its memory. Not counted, as a device would
// not hold them: thread stacks, the interpreter's arenas, the libraries' code.
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stddef.h>
#include <stdatomic.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static _Atomic long live, peak;
static _Atomic long limit = -1;  // live bytes allowed; -1: not armed

long oomcap_live(void) { return live; }
long oomcap_peak(void) { return peak; }
void oomcap_reset_peak(void) { peak = live; }
void oomcap_arm(long over_now) { limit = live + over_now; }
void oomcap_disarm(void) { limit = -1; }  // a forked DataLoader worker: host memory, not the device's

static int over(size_t n) {
    long cap = limit;
    return cap >= 0 && (n > (size_t)cap || live + (long)n > cap);
}
static void add(long size) {
    long now = atomic_fetch_add(&live, size) + size, seen = peak;
    while (now > seen && !atomic_compare_exchange_weak(&peak, &seen, now)) {}
}
static void *took(void *p) {
    if (p) add((long)malloc_usable_size(p));
    return p;
}
static void gave(void *p) { if (p) atomic_fetch_sub(&live, (long)malloc_usable_size(p)); }
static void *refused(void) { errno = ENOMEM; return 0; }

void *malloc(size_t n) { return took(__libc_malloc(n)); }
void *calloc(size_t a, size_t b) { return took(__libc_calloc(a, b)); }
void free(void *p) { gave(p); __libc_free(p); }
void *realloc(void *p, size_t n) {
    if (!p) return malloc(n);
    gave(p);
    void *q = __libc_realloc(p, n);
    if (!q && n) { took(p); return 0; }  // the old block is still the caller's
    return took(q);
}
void *memalign(size_t a, size_t n) { return over(n) ? refused() : took(__libc_memalign(a, n)); }
void *aligned_alloc(size_t a, size_t n) { return memalign(a, n); }
void *valloc(size_t n) { return memalign((size_t)sysconf(_SC_PAGESIZE), n); }
void *pvalloc(size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return memalign(page, (n + page - 1) / page * page);
}
int posix_memalign(void **out, size_t a, size_t n) {
    if (over(n)) return ENOMEM;
    void *p = took(__libc_memalign(a, n));
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

// Files mapped readable: where each is and how long, so that its unmapping gives back what it took.
#define FILES 4096
static struct { char *at; size_t len; } files[FILES];
static pthread_mutex_t files_lock = PTHREAD_MUTEX_INITIALIZER;

static void *map(void *a, size_t n, int prot, int flags, int fd, off_t off) {
    int counted = fd >= 0 && (prot & PROT_READ) && !(flags & MAP_FIXED);
    if (counted && over(n)) { errno = ENOMEM; return MAP_FAILED; }
    void *p = (void *)syscall(SYS_mmap, a, n, prot, flags, fd, off);
    if (p == MAP_FAILED) return p;  // errno set by syscall()
    if (counted) {
        pthread_mutex_lock(&files_lock);
        for (int i = 0; i < FILES; i++) {
            if (!files[i].at) {
                files[i].at = p, files[i].len = n;
                add((long)n);
                break;
            }
        }  // more files than slots: the rest are not counted
        pthread_mutex_unlock(&files_lock);
    }
    return p;
}
void *mmap(void *a, size_t n, int prot, int flags, int fd, off_t off) { return map(a, n, prot, flags, fd, off); }
void *mmap64(void *a, size_t n, int prot, int flags, int fd, off_t off) { return map(a, n, prot, flags, fd, off); }
int munmap(void *a, size_t n) {
    long r = syscall(SYS_munmap, a, n);
    if (r == 0) {
        char *from = a, *to = (char *)a + n;
        pthread_mutex_lock(&files_lock);
        for (int i = 0; i < FILES; i++) {
            char *at = files[i].at, *end = at + files[i].len;
            if (at && from <= at && end <= to) {  // wholly unmapped: partial unmaps keep it counted, as is safe
                atomic_fetch_sub(&live, (long)files[i].len);
                files[i].at = 0;
            }
        }
        pthread_mutex_unlock(&files_lock);
    }
    return (int)r;
}
