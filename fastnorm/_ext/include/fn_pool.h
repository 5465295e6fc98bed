/* A cache of large freed array buffers, as a NumPy memory handler (NEP 49).
 *
 * Why: glibc serves allocations above 32 MiB with a fresh mmap and returns them to the
 * kernel on free (and smaller ones, once freed, may also go back: a 25 MiB result came
 * back as fresh pages call after call), so a large result NumPy allocates is page-faulted
 * and zeroed by the kernel as it is first written: for relu of 4096 x 4096 float32
 * (64 MiB) that costs about as much as the kernel (1 thread: 5.8 ms per call with a fresh
 * output, 2.9 ms into a reused one).  A training loop allocates the same sizes step after
 * step; this cache hands the freed buffers back out.
 *
 * fastnorm installs the handler only around the allocation of its own large outputs
 * (fastnorm/_ext/_pool.pyx); the arrays are ordinary NumPy arrays that own their data
 * and remember the handler, so NumPy calls fn_pool_free when they die, and tracemalloc
 * sees them as it sees any array.  Every block carries a small header (below, at
 * FN_POOL_HEADER); blocks are rounded up to whole units (FN_POOL_UNIT), or from
 * FN_POOL_UNITS_UP_TO on to whole granules (FN_POOL_GRANULE), so that near sizes share
 * blocks, and kept, most recently freed first, while the cached total stays within the
 * limit (fn_pool_set_limit; 0 disables caching) and a slot is free; otherwise the oldest go.
 * Every block comes from posix_memalign and goes back with free(), so a block may leave the
 * cache at any time.
 */
#ifndef FN_POOL_H
#define FN_POOL_H
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

#define FN_POOL_GRANULE ((size_t)2 << 20)    /* 2 MiB: one huge page */
#define FN_POOL_UNIT ((size_t)64 << 10)      /* blocks below FN_POOL_UNITS_UP_TO: 64 KiB units */
#define FN_POOL_UNITS_UP_TO ((size_t)8 << 20)
#define FN_POOL_SLOTS 128

#if defined(_WIN32)
/* No cache (no pthreads here): the handler passes everything to libc. */
#define FN_POOL_AVAILABLE 0
static unsigned fn_pool_page_offset;  /* unused here */
static int fn_pool_last_fresh = 1;
static void *fn_pool_malloc(void *ctx, size_t bytes) { (void)ctx; return malloc(bytes ? bytes : 1); }
static void *fn_pool_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    return calloc(nelem ? nelem : 1, elsize ? elsize : 1);
}
static void *fn_pool_realloc(void *ctx, void *ptr, size_t bytes) { (void)ctx; return realloc(ptr, bytes ? bytes : 1); }
static void fn_pool_free(void *ctx, void *ptr, size_t bytes) { (void)ctx; (void)bytes; free(ptr); }
static void fn_pool_set_limit(size_t limit) { (void)limit; }
static void fn_pool_init(void) {}
static void fn_pool_stats(size_t *cached, size_t *limit, uint64_t *hits, uint64_t *misses)
{
    *cached = *limit = 0;
    *hits = *misses = 0;
}
#else
#define FN_POOL_AVAILABLE 1
#include <pthread.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

typedef struct fn_pool_slot { void *ptr; size_t bytes; uint64_t stamp; } fn_pool_slot;

static struct {
    pthread_mutex_t lock;
    fn_pool_slot slot[FN_POOL_SLOTS];
    size_t cached, limit;
    uint64_t clock;
    uint64_t hits, misses;
} fn_pool = { PTHREAD_MUTEX_INITIALIZER, {{0}}, 0, 0, 0, 0, 0 };

/* The capacity of a block serving `bytes` (its data, header and lead): whole units below
 * FN_POOL_UNITS_UP_TO, at most 64 KiB unused of a block of 1 MiB and more (whole granules
 * there would give a 2 MiB result, whose header and lead pass a granule, a block of 4 MiB);
 * whole granules from there on, at most a fifth unused. */
static inline size_t fn_pool_capacity(size_t bytes)
{
    const size_t unit = bytes < FN_POOL_UNITS_UP_TO ? FN_POOL_UNIT : FN_POOL_GRANULE;
    return (bytes + unit - 1) / unit * unit;
}

/* A cached block of capacity cap, or NULL. */
static void *fn_pool_take(size_t cap)
{
    void *p = NULL;
    pthread_mutex_lock(&fn_pool.lock);
    int best = -1;
    for (int i = 0; i < FN_POOL_SLOTS; ++i)
        if (fn_pool.slot[i].ptr && fn_pool.slot[i].bytes == cap
            && (best < 0 || fn_pool.slot[i].stamp > fn_pool.slot[best].stamp))
            best = i;
    if (best >= 0) {
        p = fn_pool.slot[best].ptr;
        fn_pool.slot[best].ptr = NULL;
        fn_pool.cached -= cap;
        ++fn_pool.hits;
    } else {
        ++fn_pool.misses;
    }
    pthread_mutex_unlock(&fn_pool.lock);
    return p;
}

/* Frees cached blocks, oldest first, until at most `keep` bytes stay cached.  Returns
 * them through `out` (at most FN_POOL_SLOTS) so that free() runs outside the lock. */
static int fn_pool_evict_locked(size_t keep, void **out)
{
    int n = 0;
    while (fn_pool.cached > keep) {
        int old = -1;
        for (int i = 0; i < FN_POOL_SLOTS; ++i)
            if (fn_pool.slot[i].ptr && (old < 0 || fn_pool.slot[i].stamp < fn_pool.slot[old].stamp))
                old = i;
        if (old < 0)
            break;
        out[n++] = fn_pool.slot[old].ptr;
        fn_pool.cached -= fn_pool.slot[old].bytes;
        fn_pool.slot[old].ptr = NULL;
    }
    return n;
}

/* Every block handed out is [a 64-byte header: the block's capacity][lead][the array's
 * data], the block 4 KiB-aligned (2 MiB from one granule on) and the data at the caller's
 * offset within a 4 KiB page (fn_pool_page_offset, set around one allocation), at least a
 * header past the block's start, so that free and realloc find the block from the data
 * pointer alone: it starts at the page holding data - FN_POOL_HEADER.
 * fastnorm gives a result the page offset of the input it is computed from.  Within a
 * cache line that aligns the streaming path's loads and stores alike after its lead (relu
 * backward of 4096x4096 float32 with NumPy's inputs, which start 16 bytes past a line,
 * 1 thread: 4.18 ms into a line-aligned result, 3.30 ms into one 16 bytes past a line);
 * within the page it keeps the result from starting a little after its input modulo 4 KiB,
 * where the CPU takes the kernel's loads for readers of its earlier stores (_pool.pyx,
 * _ALIAS_WINDOW). */
#define FN_POOL_HEADER 64
#define FN_POOL_PAGE 4096
static _Thread_local unsigned fn_pool_page_offset;
/* Whether this thread's last block came fresh from the kernel rather than from the cache
 * (its pages then get zeroed at first touch and sit in the cache: plain stores are faster
 * there than streaming ones). */
static _Thread_local int fn_pool_last_fresh;

static inline char *fn_pool_block_of(void *data)
{
    return (char *)(((uintptr_t)data - FN_POOL_HEADER) & ~(uintptr_t)(FN_POOL_PAGE - 1));
}

/* The data's distance from its block's start for a page offset. */
static inline size_t fn_pool_lead(unsigned page_offset)
{
    const size_t offset = page_offset % FN_POOL_PAGE;
    return offset >= FN_POOL_HEADER ? offset : offset + FN_POOL_PAGE;
}

/* A block for `bytes` of data at any page offset; returns its base (its capacity in the
 * header).  Every block may come from and go back to the cache: the handler serves only
 * results of at least the cache's size threshold (_pool.pyx) and their reallocations. */
static char *fn_pool_new_block(size_t bytes)
{
    if (bytes > SIZE_MAX - FN_POOL_PAGE - FN_POOL_HEADER - FN_POOL_GRANULE)
        return NULL;
    const size_t cap = fn_pool_capacity(bytes + FN_POOL_PAGE + FN_POOL_HEADER);
    void *p = fn_pool_take(cap);
    fn_pool_last_fresh = p == NULL;
    if (p == NULL) {
        if (posix_memalign(&p, cap >= FN_POOL_GRANULE ? FN_POOL_GRANULE : FN_POOL_PAGE, cap) != 0)
            return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (cap >= FN_POOL_GRANULE)
            madvise(p, cap, MADV_HUGEPAGE);  /* as NumPy does for its large arrays */
#endif
    }
    ((size_t *)p)[0] = cap;
    return (char *)p;
}

static void fn_pool_release(char *block);

static void *fn_pool_malloc(void *ctx, size_t bytes)
{
    (void)ctx;
    char *block = fn_pool_new_block(bytes);
    return block ? block + fn_pool_lead(fn_pool_page_offset) : NULL;
}

static void *fn_pool_calloc(void *ctx, size_t nelem, size_t elsize)
{
    if (elsize && nelem > SIZE_MAX / elsize)
        return NULL;
    void *p = fn_pool_malloc(ctx, nelem * elsize);
    if (p)
        memset(p, 0, nelem * elsize);
    return p;
}

/* The data moves to a new block at the same page offset. */
static void *fn_pool_realloc(void *ctx, void *ptr, size_t bytes)
{
    (void)ctx;
    if (ptr == NULL)
        return fn_pool_malloc(ctx, bytes);
    char *old = fn_pool_block_of(ptr);
    const size_t lead = (size_t)((char *)ptr - old);
    const size_t held = ((size_t *)old)[0] - lead;
    char *block = fn_pool_new_block(bytes);
    if (block == NULL)
        return NULL;
    char *data = block + lead;
    memcpy(data, ptr, held < bytes ? held : bytes);
    fn_pool_release(old);
    return data;
}

static void fn_pool_free(void *ctx, void *ptr, size_t bytes)
{
    (void)ctx;
    (void)bytes;
    if (ptr != NULL)
        fn_pool_release(fn_pool_block_of(ptr));
}

/* Caches a block (the oldest go when the limit is passed or every slot is taken). */
static void fn_pool_release(char *block)
{
    const size_t cap = ((size_t *)block)[0];
    void *ptr = block;
    void *evicted[FN_POOL_SLOTS + 1];
    int n = 0;
    pthread_mutex_lock(&fn_pool.lock);
    int slot = -1;
    for (int i = 0; i < FN_POOL_SLOTS && slot < 0; ++i)
        if (!fn_pool.slot[i].ptr)
            slot = i;
    if (cap > fn_pool.limit) {
        evicted[n++] = ptr;  /* larger than the whole cache may hold */
    } else {
        n = fn_pool_evict_locked(fn_pool.limit - cap, evicted);
        if (slot < 0) {  /* every slot busy: the oldest block went above, reuse its slot */
            for (int i = 0; i < FN_POOL_SLOTS && slot < 0; ++i)
                if (!fn_pool.slot[i].ptr)
                    slot = i;
        }
        if (slot < 0) {  /* every slot still busy, the limit not reached: the oldest goes */
            for (int i = 0; i < FN_POOL_SLOTS; ++i)
                if (slot < 0 || fn_pool.slot[i].stamp < fn_pool.slot[slot].stamp)
                    slot = i;
            evicted[n++] = fn_pool.slot[slot].ptr;
            fn_pool.cached -= fn_pool.slot[slot].bytes;
        }
        fn_pool.slot[slot].ptr = ptr;
        fn_pool.slot[slot].bytes = cap;
        fn_pool.slot[slot].stamp = ++fn_pool.clock;
        fn_pool.cached += cap;
    }
    pthread_mutex_unlock(&fn_pool.lock);
    for (int i = 0; i < n; ++i)
        free(evicted[i]);
}

/* A child forked while another thread held the lock would wait for it forever: the child
 * starts with a fresh lock (its cache keeps the parent's blocks, which it owns a copy of). */
static void fn_pool_after_fork_in_child(void) { pthread_mutex_init(&fn_pool.lock, NULL); }
static void fn_pool_init(void) { pthread_atfork(NULL, NULL, fn_pool_after_fork_in_child); }

/* Sets the cached-bytes limit (0: cache nothing) and frees what exceeds it. */
static void fn_pool_set_limit(size_t limit)
{
    void *evicted[FN_POOL_SLOTS];
    pthread_mutex_lock(&fn_pool.lock);
    fn_pool.limit = limit;
    const int n = fn_pool_evict_locked(limit, evicted);
    pthread_mutex_unlock(&fn_pool.lock);
    for (int i = 0; i < n; ++i)
        free(evicted[i]);
}

static void fn_pool_stats(size_t *cached, size_t *limit, uint64_t *hits, uint64_t *misses)
{
    pthread_mutex_lock(&fn_pool.lock);
    *cached = fn_pool.cached;
    *limit = fn_pool.limit;
    *hits = fn_pool.hits;
    *misses = fn_pool.misses;
    pthread_mutex_unlock(&fn_pool.lock);
}
#endif /* _WIN32 */

#endif /* FN_POOL_H */
