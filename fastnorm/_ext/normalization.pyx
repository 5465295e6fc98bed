"""Cython glue of the normalization kernels (C loops in fn_normalization_impl.h).

Arguments arrive validated, contiguous and of one compute dtype from
fastnorm.normalization; this module picks the ISA variant, splits work over OpenMP
threads and releases the GIL.  Work is split so that results do not depend on the
thread count: every per-unit or per-row reduction runs whole inside one thread, and
column reductions use row blocks whose size depends only on the shape, with the block
partials added in block order afterwards.
"""
import numpy as np
from libc.stdint cimport int64_t
from libc.float cimport FLT_EPSILON, DBL_EPSILON
from libc.math cimport isfinite, isinf, isnan, sqrt
from libc.string cimport memset
from cpython.pyport cimport PY_SSIZE_T_MAX
cimport numpy as cnp
from fastnorm._ext._shared cimport (isa_level, threads_for, plain, plain_float, overlap, output_for,
                                    same_or_apart, same_shape)
from fastnorm._ext._pool cimport pooled_empty, streams
from cython.parallel cimport prange
from cython cimport floating

cnp.import_array()

cdef extern from "fn_normalization.h" nogil:
    enum: FN_NORM_CHANNEL_ROW_BYTES
    ctypedef struct fn_norm_kernels:
        void (*stats_runs_f32)(const float *, int64_t, int64_t, int64_t, int64_t, int64_t, double *, double *) noexcept nogil
        void (*stats_cols_f32)(const float *, int64_t, int64_t, const double *, double *, double *, int) noexcept nogil
        void (*dual_runs_f32)(const float *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t, const double *, double *, double *) noexcept nogil
        void (*dual_cols_f32)(const float *, const float *, int64_t, int64_t, const double *, double *, double *, int, const float *) noexcept nogil
        void (*affine_f32)(const float *, float *, int64_t, int64_t, int64_t, int64_t, int64_t, const float *, const float *, const float *, int) noexcept nogil
        void (*affine_grad_f32)(const float *, const float *, float *, int64_t, int64_t, int64_t, int64_t, int64_t, const float *, const float *, const float *, const float *, int) noexcept nogil
        void (*rows_forward_f32)(const float *, float *, int64_t, int64_t, int64_t, const float *, const float *, double, int, float *, float *, int) noexcept nogil
        void (*rows_backward_f32)(const float *, const float *, float *, int64_t, int64_t, int64_t, const float *, const float *, const float *, int, double *, double *, int, int) noexcept nogil
        void (*cols_coefs_f32)(int64_t, int64_t, const double *, const double *, double, int, float *, float *, float *, float *, float *) noexcept nogil
        void (*cols_forward_f32)(const float *, float *, int64_t, int64_t, int64_t, const float *, const float *, const float *, const float *, const float *, int) noexcept nogil
        void (*cols_grad_coefs_f32)(int64_t, int64_t, const float *, const double *, const double *, int, float *, float *, float *) noexcept nogil
        void (*cols_backward_f32)(const float *, const float *, float *, int64_t, int64_t, int64_t, const float *, const float *, const float *, const float *, const float *, const float *, double *, double *, int) noexcept nogil
        void (*group_forward_f32)(const float *, float *, int64_t, int64_t, int64_t, int64_t, int64_t, const float *, const float *, double, double *, double *, int) noexcept nogil
        void (*group_backward_f32)(const float *, const float *, float *, int64_t, int64_t, int64_t, int64_t, int64_t, const float *, const double *, const float *, const double *, double *, double *, int) noexcept nogil
        void (*bn_channels_f32)(int64_t, int64_t, int, int, double, double, double *, const double *, float *, float *, const float *, const float *, float *, float *, float *, float *, float *) noexcept nogil
        void (*bn_backward_channels_f32)(int64_t, int64_t, int, const float *, const double *, const double *, const double *, float *, float *, float *) noexcept nogil
        void (*channel_affine_f32)(int64_t, const double *, const double *, const float *, const float *, float *, float *, float *) noexcept nogil
        int (*narrow_f32)(int64_t, const double *, float *) noexcept nogil
        void (*stats_runs_f64)(const double *, int64_t, int64_t, int64_t, int64_t, int64_t, double *, double *) noexcept nogil
        void (*stats_cols_f64)(const double *, int64_t, int64_t, const double *, double *, double *, int) noexcept nogil
        void (*dual_runs_f64)(const double *, const double *, int64_t, int64_t, int64_t, int64_t, int64_t, const double *, double *, double *) noexcept nogil
        void (*dual_cols_f64)(const double *, const double *, int64_t, int64_t, const double *, double *, double *, int, const double *) noexcept nogil
        void (*affine_f64)(const double *, double *, int64_t, int64_t, int64_t, int64_t, int64_t, const double *, const double *, const double *, int) noexcept nogil
        void (*affine_grad_f64)(const double *, const double *, double *, int64_t, int64_t, int64_t, int64_t, int64_t, const double *, const double *, const double *, const double *, int) noexcept nogil
        void (*rows_forward_f64)(const double *, double *, int64_t, int64_t, int64_t, const double *, const double *, double, int, double *, double *, int) noexcept nogil
        void (*rows_backward_f64)(const double *, const double *, double *, int64_t, int64_t, int64_t, const double *, const double *, const double *, int, double *, double *, int, int) noexcept nogil
        void (*cols_coefs_f64)(int64_t, int64_t, const double *, const double *, double, int, double *, double *, double *, double *, double *) noexcept nogil
        void (*cols_forward_f64)(const double *, double *, int64_t, int64_t, int64_t, const double *, const double *, const double *, const double *, const double *, int) noexcept nogil
        void (*cols_grad_coefs_f64)(int64_t, int64_t, const double *, const double *, const double *, int, double *, double *, double *) noexcept nogil
        void (*cols_backward_f64)(const double *, const double *, double *, int64_t, int64_t, int64_t, const double *, const double *, const double *, const double *, const double *, const double *, double *, double *, int) noexcept nogil
        void (*group_forward_f64)(const double *, double *, int64_t, int64_t, int64_t, int64_t, int64_t, const double *, const double *, double, double *, double *, int) noexcept nogil
        void (*group_backward_f64)(const double *, const double *, double *, int64_t, int64_t, int64_t, int64_t, int64_t, const double *, const double *, const double *, const double *, double *, double *, int) noexcept nogil
        void (*bn_channels_f64)(int64_t, int64_t, int, int, double, double, double *, const double *, double *, double *, const double *, const double *, double *, double *, double *, double *, double *) noexcept nogil
        void (*bn_backward_channels_f64)(int64_t, int64_t, int, const double *, const double *, const double *, const double *, double *, double *, double *) noexcept nogil
        void (*channel_affine_f64)(int64_t, const double *, const double *, const double *, const double *, double *, double *, double *) noexcept nogil
        int (*narrow_f64)(int64_t, const double *, double *) noexcept nogil
        void (*finish_moments)(int64_t, const double *, double, double *, double *) noexcept nogil
    const fn_norm_kernels *fn_norm_kernels_by_isa[]
    int FN_ISA_COUNT
    int FN_ISA_AVX512
    double fn_running_step(double r, double f, double s)
    double fn_sums_center(double first) noexcept nogil

cdef const fn_norm_kernels *_kernels = fn_norm_kernels_by_isa[0]

# float64 layer norm backward sums its parameter gradients in a separate pass over rows in
# cache (see _rows_backward_run) for rows wider than _param_pass_min_k elements whose dy and x
# together exceed _param_pass_min_bytes; set_isa sets the bytes by kernel variant.  (float32
# always takes its own pass, fn_norm_rows_backward.)
cdef Py_ssize_t _PARAM_PASS_NEVER = PY_SSIZE_T_MAX
cdef Py_ssize_t _PARAM_PASS_AVX512_MIN_BYTES = 12 << 20
cdef Py_ssize_t _param_pass_min_k = 512
cdef Py_ssize_t _param_pass_min_bytes = _PARAM_PASS_NEVER   # set by set_isa


def _set_param_pass_threshold(Py_ssize_t min_k, Py_ssize_t min_bytes):
    """For tests: set where float64 layer norm backward takes the parameter-gradient pass
    (rows wider than min_k whose dy and x exceed min_bytes; both paths give the same bits;
    float32 always takes its pass).
    Returns the previous (min_k, min_bytes).  set_isa sets min_bytes again (by variant)."""
    global _param_pass_min_k, _param_pass_min_bytes
    previous = (_param_pass_min_k, _param_pass_min_bytes)
    _param_pass_min_k, _param_pass_min_bytes = min_k, min_bytes
    return previous

#: Runs shorter than this are reduced column-wise (vectorized across channels) instead.
RUN_MIN = 16

# Batch norm of large channels-first data with long runs goes by blocks of channels: each
# block's statistics, then its output pass while the block is still in the caches, instead of
# statistics over the whole array and then an output pass that reads it from memory again.
# A block's runs lie side by side for each sample, and the next sample's runs C * B items
# further on: a jump the hardware prefetcher picks up slowly (the backward sums of (64, 64,
# 56, 56) float32 by blocks of 2 channels ran 1.6x slower than in address order), so blocks
# are used only where that is outweighed: the arrays the statistics read hold at least
# _channel_blocks_from bytes (beyond the caches), runs are at least _channel_block_min_run
# bytes, and one channel of them fits a block of _channel_block_bytes.  Measured on AMD Zen 4
# (32 MiB L3), interleaved, speed ratio of blocks to none at 1 / 2 threads: backward (64, 64,
# 56, 56) float32 0.95-1.28x (median of 7 runs 1.08x) / 1.10-1.30x, float64 1.09-1.13x /
# 1.28-1.32x; backward float32 (16, 256, 56, 56) 1.2x / 1.35x, (8, 64, 112, 112) 1.3x /
# 1.24-1.44x; backward (16, 64, 56, 56) float64 (51 MB read) 1.29-1.34x / 1.15-1.32x; forward
# (64, 64, 56, 56) float32 1.01-1.06x / 1.00-1.18x.  Short runs lost (backward float32 (128,
# 64, 32, 32) 0.72-0.87x, (256, 64, 28, 28) 0.70-0.74x, 1 thread), and so did data that mostly
# fit the L3 ((64, 32, 32, 64) float32 backward, 34 MB read: 0.86-1.05x).  Blocks and no blocks
# give the same bits.
#   That host's 4 MiB blocks are _CHANNEL_BLOCK_MAX; fastnorm._config sets a smaller L3's
# quarter (_fit_channel_blocks), and a channel larger than the block but at most half the L3
# (and _CHANNEL_BLOCK_MAX) goes as a block of its own.  AMD Zen 1 (8 MiB L3 shared by both
# vCPUs), one process, 5 interleaved rounds, medians at 1 / 2 threads, 2 MiB blocks against
# 4 MiB: (64, 64, 56, 56) float32 forward 9.83 / 5.83 against 11.05 / 6.66 ms (no blocks 13.38 / 7.68), backward
# 12.40 / 8.72 against 12.97 / 9.58 (none 15.78 / 11.58); float64 forward 17.81 / 14.72
# against 21.18 / 17.62, backward (3 MiB channels, alone either way) 27.33 / 21.53 (none 33.03
# / 24.38); (16, 256, 56, 56) float32 forward 10.97 / 7.24 against 13.67 / 8.54, backward
# 13.36 / 10.10 against 15.17 / 11.20; (8, 64, 112, 112) backward 6.43 / 4.37 against 8.02 /
# 5.00, forward level.
cdef Py_ssize_t _CHANNEL_BLOCK_MAX = 4 << 20
cdef Py_ssize_t _channel_block_bytes = _CHANNEL_BLOCK_MAX
cdef Py_ssize_t _channel_alone_bytes = _CHANNEL_BLOCK_MAX
cdef Py_ssize_t _channel_blocks_from = 48 << 20
cdef Py_ssize_t _channel_block_min_run = 8 << 10


def _fit_channel_blocks(l3_bytes):
    """Set the channel blocks for an L3 cache of l3_bytes (None or 0: unknown, no change):
    blocks of a quarter of it, single channels of up to half of it, both at most
    _CHANNEL_BLOCK_MAX.  Returns (block bytes, largest single channel's bytes)."""
    global _channel_block_bytes, _channel_alone_bytes
    if l3_bytes:
        _channel_block_bytes = min(_CHANNEL_BLOCK_MAX, <Py_ssize_t>l3_bytes // 4)
        _channel_alone_bytes = min(_CHANNEL_BLOCK_MAX, <Py_ssize_t>l3_bytes // 2)
    return _channel_block_bytes, _channel_alone_bytes


def _set_channel_blocks(Py_ssize_t block_bytes, Py_ssize_t from_bytes, Py_ssize_t min_run):
    """For tests and benchmarks: set the channel blocks of batch norm (block_bytes 0: none).
    Returns the previous (block_bytes, from_bytes, min_run)."""
    global _channel_block_bytes, _channel_blocks_from, _channel_block_min_run
    previous = (_channel_block_bytes, _channel_blocks_from, _channel_block_min_run)
    _channel_block_bytes, _channel_blocks_from, _channel_block_min_run = block_bytes, from_bytes, min_run
    return previous


# The column sums of short runs (batch norm 1-D, channels-last) fetch the next rows into L2
# chunk by chunk (fn_norm_stats_cols) when x takes _cols_fetch_from bytes or more: arrays
# of more than a third of this host's 32 MiB L3, which a call is less likely to find cached.
# 1 thread, Zen 4, through the API, interleaved, fetching against not (so with the data of
# the previous call cached, as in a training loop), forward / backward:
#   16 MiB: (4096, 1024) 0.97-1.04x / 1.00-1.06x (2 threads 1.04x / 1.01-1.08x), (2048, 2048)
#           0.96-1.00x / 1.06-1.10x, (1024, 4096) 0.96x / 1.07x, (8192, 512) 1.30-1.33x /
#           1.32-1.48x, (16384, 256) 1.42-1.57x / 1.62-1.69x;  32 MiB: (32768, 256) 1.50x /
#           1.66x (rows of 1-2 KiB gain most: their streams end at every page);
#   4-8 MiB: (4096, 256), (2048, 512), (8192, 256), (4096, 512) 0.97-1.05x, but rows of
#           8 KiB lost: (1024, 2048) 0.95x forward, (512, 2048) 0.93x / 0.95x.
# From memory the sums alone gain up to 2x (see the kernel).  But only rows narrower than
# _cols_fetch_row_below bytes fetch (forward and backward, float32 and float64 alike; only
# float32 was measured): on AMD Zen 1 (8 MiB L3), with the float32 column sums of the
# backward in float visits (dual_cols_float), through the API, one process, 7 interleaved
# rounds, medians, time with the fetch / time without it (above 1: the fetch is slower), at
# 1 thread forward, backward, then at 2 threads forward, backward: (4096, 1024) 1.03, 1.10,
# 1.06, 1.07; (2048, 2048) 1.07, 1.10, 1.06, 1.00; (1024, 4096) 1.06, 1.11, 1.05, 1.04; while
# narrower rows still gained forward and were level backward: (8192, 512) 0.95, 1.01, 0.98,
# 1.02; (16384, 256) 0.81, 0.99, 0.88, 1.01; (32768, 256) 0.84, 1.01, 0.89, 1.01.  On Zen 4 the
# rows of 4 KiB and more (above, the other way round: speed with the fetch / without) had
# lost forward and gained backward, level over both.  The same bits either way.
cdef Py_ssize_t _cols_fetch_from = 12 << 20
cdef Py_ssize_t _cols_fetch_row_below = 4 << 10


def _set_cols_fetch(Py_ssize_t nbytes, Py_ssize_t row_below):
    """For tests and benchmarks: fetch in the column sums from arrays of nbytes on whose rows
    are narrower than row_below bytes.  Returns the previous (nbytes, row_below)."""
    global _cols_fetch_from, _cols_fetch_row_below
    previous = (_cols_fetch_from, _cols_fetch_row_below)
    _cols_fetch_from, _cols_fetch_row_below = nbytes, row_below
    return previous


cdef inline bint _cols_fetch(Py_ssize_t nbytes, Py_ssize_t row_bytes) noexcept:
    """Whether the column sums over an x of nbytes in rows of row_bytes fetch ahead (see
    _cols_fetch_from)."""
    return nbytes >= _cols_fetch_from and row_bytes < _cols_fetch_row_below


def _cols_fetch_taken(Py_ssize_t nbytes, Py_ssize_t row_bytes):
    """For tests: _cols_fetch."""
    return _cols_fetch(nbytes, row_bytes)


def _channel_block_count(Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, Py_ssize_t itemsize, int arrays,
                         int nthreads):
    """For tests: _channel_blocks (0: the statistics of all channels, then one output pass)."""
    return _channel_blocks(A, C, B, itemsize, arrays, nthreads)


cdef Py_ssize_t _channel_blocks(Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, Py_ssize_t itemsize,
                                int arrays, int nthreads) noexcept:
    """How many blocks batch norm over (A, C, B) data, whose statistics read `arrays` arrays,
    goes by (0: none; block blk holds channels blk*C//n .. (blk+1)*C//n - 1 of n blocks).  A
    whole number of blocks per thread, and at least four channels per thread, so that the
    threads' shares differ by little.  Only where the statistics go by runs (dual_sums, stats:
    B >= RUN_MIN or A == 1), so that blocks sum every channel in the same order."""
    cdef Py_ssize_t channel_bytes = arrays * A * B * itemsize, per_block, per_thread
    if (_channel_block_bytes <= 0 or C * channel_bytes < _channel_blocks_from
            or B * itemsize < _channel_block_min_run
            or channel_bytes > max(_channel_block_bytes, _channel_alone_bytes)
            or C < 4 * nthreads or not (B >= RUN_MIN or A == 1)):
        return 0
    per_block = max(1, _channel_block_bytes // channel_bytes)      # channels
    per_thread = _share(C, nthreads)
    return min(C, nthreads * ((per_thread + per_block - 1) // per_block))


def set_isa(int level):
    """Route every call to kernel variant `level` (an index of _runtime.ISA_NAMES)."""
    global _kernels, _param_pass_min_bytes
    cdef int chosen = isa_level(level, FN_ISA_COUNT)
    _kernels = fn_norm_kernels_by_isa[chosen]
    # The float64 parameter-gradient pass was measured faster with the AVX-512 kernels (Zen
    # 4) and slower with the others (Zen 3): see _rows_backward_run.
    _param_pass_min_bytes = _PARAM_PASS_AVX512_MIN_BYTES if chosen == FN_ISA_AVX512 else _PARAM_PASS_NEVER


cdef inline Py_ssize_t _share(Py_ssize_t n, int parts) noexcept nogil:
    return (n + parts - 1) // parts


cdef inline Py_ssize_t _row_block(Py_ssize_t rows, Py_ssize_t min_rows) noexcept nogil:
    """Rows per block of a column reduction: from the shape only (at most ~32 blocks)."""
    return max(min_rows, (rows + 31) // 32)


# Batch norm training of one-element runs (1-D, channels-last) with few rows sums its columns
# on one thread (one block of rows: _stats_run, _dual_sums_run), which leaves x (and dy) in
# that core's cache; a second thread in the output pass reads its half from there, and with
# few rows per channel the per-channel arithmetic, serial too, is a large part of the call.
# So with at most _WARM_SERIAL_ROWS rows, while the output pass reads less than
# _WARM_SERIAL_BYTES, the call runs on one thread.  Zen 4 (1 MiB L2 per core), float32, 2
# threads against 1 through the API, interleaved medians, forward / backward: (8, 4096) 0.81x /
# 0.83x, (16, 2048) 0.51x / 1.07x, (8, 8192) 0.81x / 0.83x, (8, 16384) 0.83x / 1.14x, (8, 32768)
# 0.88x / 1.09x, (8, 65536) 1.01x / 1.16x; the rule's build against the one before, both at 2
# threads, in a later window: (8, 4096) 2.68x / 2.39x, (16, 2048) 2.18x / 1.95x (so the 1.07x
# above is not the rule: the second core's speed varies on this VM); and one thread against
# two for the output pass alone: (32, 2048) 0.92x / 0.97x, (32, 4096) 0.92x, (64, 2048) 0.91x,
# (64, 1024) 0.98x / 0.88x: from 32 rows on the second thread pays.
cdef Py_ssize_t _WARM_SERIAL_ROWS = 16
cdef Py_ssize_t _WARM_SERIAL_BYTES = 1 << 20


cdef inline bint _warm_serial(bint training, Py_ssize_t A, Py_ssize_t B,
                              Py_ssize_t pass_bytes) noexcept:
    """Whether a batch norm call runs on one thread by the rule above (pass_bytes: what its
    output pass reads)."""
    return training and B == 1 and A <= _WARM_SERIAL_ROWS and pass_bytes < _WARM_SERIAL_BYTES


# The gradient passes of batch norm over channels-last rows (1-D, or channels_last=True) and
# of channels-last group norm visit four rows at a time (fn_normalization_impl.h,
# FOUR_ROWS_AT) in three arrays: dy, x and the result gx.  Where a
# row is a whole number of 4 KiB pages (more than one) and the three arrays start at one offset
# within a page, as the buffer cache places a result at its input's (and NumPy's arrays of
# one size mostly are), the twelve lines a visit touches at each column all fall in one set of
# the 8-way L1: kernel through ctypes, float32, dy and x at one offset, gx at theirs against
# 1 KiB on: (256, 2048) 158 -> 112 us, (32, 4096) 53 -> 38 us, (128, 4096) 200 -> 134 us,
# (1536, 4096) 4729 -> 3659-3776 us, (4096, 2048) 5488 -> 4605-4956 us.  Visiting one or two
# rows at a time instead was slower still ((256, 2048) 223 and 171 us at one offset).  So such
# results are placed apart from their inputs (_pool.pyx, _placement), where the cache serves
# them (from pool's min_bytes, 1 MiB by default, 8 MiB before 2026-12-05).  Through the API,
# dy and x at one offset, apart against at it, two runs, 1 / 2 threads: batch norm 1-D
# backward float32 (1024, 2048) 1.06-1.07x / 1.02-1.09x, (512, 4096) 1.07-1.09x / 1.04-1.08x, (2048, 4096) 1.00-1.01x /
# 1.05-1.10x, (4096, 2048) 1.02-1.03x / 1.02-1.04x, float64 (1024, 1024) 1.10-1.11x /
# 1.12x, (2048, 1024) 1.08-1.09x / 1.03-1.05x; channels-last group norm backward float32
# (8, 16, 16, 2048) 0.99-1.02x / 0.99-1.03x, float64 (4, 32, 32, 1024) 1.02-1.08x / 1.01-1.06x;
# the same bits.  (Placing every cached result apart, a quarter or half page from its input,
# was mixed: relu 4096x4096 forward 1.07-1.13x at 1 thread, but batch norm 1-D backward
# (4096, 1024), whose rows take one page, 0.94-0.97x, layer norm and group norm 0.94-1.02x.)
cdef bint _rows_apart = True


def _set_rows_apart(bint apart):
    """For tests and benchmarks: place the gradient of whole-page rows apart from its inputs
    (the default) or at their offset.  Returns the previous setting."""
    global _rows_apart
    previous = _rows_apart
    _rows_apart = apart
    return previous


cdef inline bint _whole_page_rows(Py_ssize_t row_bytes) noexcept:
    """Rows of row_bytes take four-row visits (wider than the kernels' FOUR_ROWS_AT bound) and
    lie a whole number of 4 KiB pages apart (the span of L1's sets)."""
    return (_rows_apart and row_bytes > FN_NORM_CHANNEL_ROW_BYTES
            and row_bytes % 4096 == 0)


# Layer norm backward's parameter gradients are column sums over row blocks of at least
# _LN_PARAM_BLOCK_BYTES of dy and x (and at most ~32 blocks): each block has a partial row
# of its own to zero, fill (its first rows reading it from L2) and add up afterwards: with
# blocks of 16 rows (the earlier rule, 32 blocks for (512, 768)), kernel calls through ctypes
# took 1.5x as long as with one block.  Zen 3, through the API, float32, both builds in one
# process, paired medians of 31 rounds against 16-row blocks, 1 / 2 threads: (512, 768)
# 1.18x / 1.07x, (256, 1024) 1.05x / 1.10x, (32, 768) 1.10x / 1.13x, (1024, 768) 1.17x /
# level, (2048, 256), (8192, 768) level.  (One block for the whole array ran 1.04-1.12x
# faster at 1 thread than 256 KiB blocks but 0.56-0.67x at 2; 1 MiB blocks came out between.)
cdef Py_ssize_t _LN_PARAM_BLOCK_BYTES = 256 << 10
# And at least 8 rows: rows wider than the 256 KiB had a block each, so that the partial rows
# (16 bytes per column and block) came to four times x's bytes at (4, 50000) float32 (2 per
# element of x), allocated in fresh pages call after call (750 page faults per call): paired
# medians, 1 / 2 threads, against blocks of one row: (4, 50000) 12.6x / 11.0x, (16, 50000)
# 7.5x / 14.7x, (2, 100000) 11.0x / 9.8x, (32, 32768) 5.8x / 11.3x, (128, 16384) 1.36x /
# 1.52x, (64, 8192) 1.18x / 1.41x; (384, 16384), with 12 rows per block before and after,
# level; the same float32 bits at the shapes checked (float64 gradients may differ in the last
# bit: their sums' order changed).  Rows up to one block (at most 8 rows for rows this wide) now
# leave the whole backward to one thread.
cdef Py_ssize_t _LN_PARAM_MIN_ROWS = 8


cdef Py_ssize_t _ln_param_rows(Py_ssize_t M, Py_ssize_t K, Py_ssize_t itemsize):
    """Rows per block of layer norm backward's parameter-gradient partials: from the shape
    only, so that the sums do not depend on the thread count."""
    cdef Py_ssize_t row_bytes = 2 * K * itemsize
    cdef Py_ssize_t rows = max(_LN_PARAM_MIN_ROWS, (_LN_PARAM_BLOCK_BYTES + row_bytes - 1) // row_bytes,
                               (M + 31) // 32)
    if itemsize == 4:   # whole four-row visits of float32's pass (fn_norm_rows_backward)
        rows = (rows + 3) // 4 * 4
    return rows


def _check(cond, what):
    if not cond:
        raise ValueError(f"normalization kernel: {what}")


def stats(const floating[::1] x, Py_ssize_t P, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
          double[::1] mean, double[::1] m2, int nthreads):
    """Per unit (p, c) of the (P, A, C, B) array x: mean and M2 = sum((x - mean)^2), in
    double.  OUT mean, m2: (P*C,), two distinct arrays (they may hold partial sums on the
    way).  A*B must be >= 1."""
    _check(x.shape[0] == P * A * C * B and mean.shape[0] == P * C == m2.shape[0] and A * B >= 1,
           "stats: inconsistent sizes")
    if P * C > 0:
        _stats_run(&x[0], P, A, C, B, &mean[0], &m2[0], nthreads)


cdef int _stats_run(const floating *x, Py_ssize_t P, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
                    double *mean, double *m2, int nthreads, bint raw=False) except -1:
    """stats on raw pointers (sizes checked by the caller, P*C and A*B >= 1): what the fast
    paths call, without typed memoryviews' cost per call.  raw (one-element runs only): the
    plain sums instead, sum(x) into mean and sum(x^2) into m2 (RMS norm of a Fortran-order
    x, whose mean square must not come from a mean and M2: a row with an infinity has an
    infinite sum of squares, but an M2 of inf - inf)."""
    cdef Py_ssize_t U = P * C, t, u0, ch, W, p, blk, nblk, rb, rows, c, j
    cdef int fetch
    cdef const floating *xp
    cdef cnp.ndarray keep
    cdef double *shift_p
    cdef double *s1p
    cdef double *s2p
    cdef double n
    cdef bint direct
    if B >= RUN_MIN or A == 1:
        if raw:
            raise ValueError("_stats_run: raw sums need one-element runs")
        with nogil:
            if nthreads <= 1 or U == 1:
                if floating is float:
                    _kernels.stats_runs_f32(x, A, C, B, 0, U, mean, m2)
                else:
                    _kernels.stats_runs_f64(x, A, C, B, 0, U, mean, m2)
            else:
                ch = _share(U, nthreads)
                for t in prange(nthreads, num_threads=nthreads, schedule="static"):
                    u0 = t * ch
                    if u0 < U:
                        if floating is float:
                            _kernels.stats_runs_f32(x, A, C, B, u0, min(u0 + ch, U), mean, m2)
                        else:
                            _kernels.stats_runs_f64(x, A, C, B, u0, min(u0 + ch, U), mean, m2)
        return 0
    # Short runs: column sums over fixed row blocks, every column of a channel shifted
    # by the channel's first element (fn_sums_center), so the columns' sums can simply be
    # added.
    W = C * B
    rb = _row_block(A, 64)
    nblk = (A + rb - 1) // rb
    fetch = _cols_fetch(P * A * W * <Py_ssize_t>sizeof(floating), W * <Py_ssize_t>sizeof(floating))
    # One block of one-element runs (batch norm 1-D, channels-last data): the column sums
    # are the channels' sums, so they go into mean and m2 and are finished there (the same
    # bits: _channel_total adds each column sum to +0.0), without scratch of twice W.
    direct = B == 1 and nblk == 1
    keep = _scratch(W if direct else W + 2 * nblk * W)
    shift_p = <double *>cnp.PyArray_DATA(keep)
    if not direct:
        s1p = shift_p + W
        s2p = s1p + nblk * W
    n = <double>(A * B)
    for p in range(P):
        xp = x + p * A * W
        for c in range(C):
            for j in range(B):
                shift_p[c * B + j] = 0.0 if raw else fn_sums_center(<double>xp[c * B])
        if direct:
            s1p, s2p = mean + p * C, m2 + p * C
        memset(s1p, 0, nblk * W * sizeof(double))
        memset(s2p, 0, nblk * W * sizeof(double))
        with nogil:
            if nthreads <= 1 or nblk == 1:
                for blk in range(nblk):
                    rows = min(rb, A - blk * rb)
                    if floating is float:
                        _kernels.stats_cols_f32(xp + blk * rb * W, rows, W, shift_p, s1p + blk * W, s2p + blk * W, fetch)
                    else:
                        _kernels.stats_cols_f64(xp + blk * rb * W, rows, W, shift_p, s1p + blk * W, s2p + blk * W, fetch)
            else:
                for blk in prange(nblk, num_threads=nthreads, schedule="static"):
                    rows = min(rb, A - blk * rb)
                    if floating is float:
                        _kernels.stats_cols_f32(xp + blk * rb * W, rows, W, shift_p, s1p + blk * W, s2p + blk * W, fetch)
                    else:
                        _kernels.stats_cols_f64(xp + blk * rb * W, rows, W, shift_p, s1p + blk * W, s2p + blk * W, fetch)
        if direct:
            if not raw:
                _kernels.finish_moments(C, shift_p, n, s1p, s2p)
            continue
        # The channels' totals into mean and m2, and their shifts to slots 0 .. C - 1 (slot
        # c from slot c * B, upwards: no slot is read after it is written), then the same.
        _fold_blocks(s1p, nblk, W)
        _fold_blocks(s2p, nblk, W)
        for c in range(C):
            mean[p * C + c] = _channel_total(s1p, c * B, B)
            m2[p * C + c] = _channel_total(s2p, c * B, B)
            shift_p[c] = shift_p[c * B]
        if not raw:
            _kernels.finish_moments(C, shift_p, n, mean + p * C, m2 + p * C)
    return 0


cdef cnp.ndarray _scratch(Py_ssize_t count):
    """A float64 scratch array of count elements (at least one)."""
    cdef cnp.npy_intp dim = max(count, 1)
    return cnp.PyArray_EMPTY(1, &dim, cnp.NPY_FLOAT64, 0)


cdef inline double _channel_total(const double *row, Py_ssize_t w0, Py_ssize_t B) noexcept nogil:
    """Sum of the B column sums row[w0 .. w0+B-1] of one channel, added in column order to
    +0.0 (row: the row blocks' partials folded by _fold_blocks)."""
    cdef double total = 0.0
    cdef Py_ssize_t j
    for j in range(B):
        total += row[w0 + j]
    return total


cdef void _fold_blocks(double *partial, Py_ssize_t nblk, Py_ssize_t W) noexcept nogil:
    """Adds the (nblk, W) block partials up, in block order, into block 0's row (in place): a
    loop along the rows that the compiler vectorizes.  Before, each column's sum started at
    0.0 and went down the blocks one load at a time (1024 columns of 32 blocks: twice 32K
    dependent additions of loads a row apart per call); starting it at its first partial
    instead gives the same bits, as 0.0 + p is p for every partial the kernels produce (a
    sum from +0.0 is never -0.0), except that where two blocks of a column hold NaNs the
    vector loop may keep the later block's NaN sign and payload, where the scalar sum kept
    the earlier's.  1 / 2 threads, Zen 4, interleaved against the build before, same=True:
    the statistics alone (4096, 1024) float32 1.20x / 1.35x, (1024, 1024) 1.42x / 1.67x,
    (8192, 512) 1.11x / 1.20x; batch norm 1-D training forward (4096, 1024) 1.06-1.13x /
    1.15-1.21x, (1024, 1024) 1.19x / 1.27-1.31x, backward (4096, 1024) 1.03-1.06x /
    1.05-1.10x, (1024, 1024) 1.15-1.22x / 1.11-1.21x; (16384, 256) and 2-D level."""
    cdef Py_ssize_t blk, w
    cdef double *row
    for blk in range(1, nblk):
        row = partial + blk * W
        for w in range(W):
            partial[w] += row[w]


def dual_sums(const floating[::1] dy, const floating[::1] x, Py_ssize_t P, Py_ssize_t A,
              Py_ssize_t C, Py_ssize_t B, const double[::1] center, double[::1] s1_out,
              double[::1] s2_out, int nthreads):
    """Per unit (p, c): s1 = sum(dy), s2 = sum(dy * (x - center)).  IN center: (P*C,);
    OUT s1_out, s2_out: (P*C,), distinct and apart from center (they are zeroed before the
    sums, which may read center after)."""
    _check(x.shape[0] == P * A * C * B == dy.shape[0] and center.shape[0] == P * C
           and s1_out.shape[0] == P * C == s2_out.shape[0], "dual_sums: inconsistent sizes")
    if P * C == 0:
        return
    if A * B == 0:
        np.asarray(s1_out)[:] = 0
        np.asarray(s2_out)[:] = 0
        return
    _dual_sums_run(&dy[0], &x[0], P, A, C, B, &center[0], &s1_out[0], &s2_out[0], nthreads, NULL)


cdef int _dual_sums_run(const floating *dy, const floating *x, Py_ssize_t P, Py_ssize_t A,
                        Py_ssize_t C, Py_ssize_t B, const double *center, double *s1_out,
                        double *s2_out, int nthreads, const floating *rw) except -1:
    """dual_sums on raw pointers (sizes checked by the caller, P*C and A*B >= 1); rw: NULL, or
    a weight per row of dy (A of them; P == 1, B == 1, A > 1: layer norm of a Fortran-order
    x, cols_backward), the sums then of dy * rw."""
    cdef Py_ssize_t U = P * C, t, u0, ch, W, p, blk, nblk, rb, rows, c, j
    cdef int fetch
    cdef const floating *xp
    cdef const floating *gp
    cdef cnp.ndarray keep
    cdef double *cen_p
    cdef double *s1p
    cdef double *s2p
    cdef bint direct
    cdef Py_ssize_t cen_words
    if rw != NULL and not (P == 1 and B == 1 and A > 1):
        raise ValueError("_dual_sums_run: row weights need P == 1, one-element runs, A > 1")
    if B >= RUN_MIN or A == 1:
        with nogil:
            if nthreads <= 1 or U == 1:
                if floating is float:
                    _kernels.dual_runs_f32(dy, x, A, C, B, 0, U, center, s1_out, s2_out)
                else:
                    _kernels.dual_runs_f64(dy, x, A, C, B, 0, U, center, s1_out, s2_out)
            else:
                ch = _share(U, nthreads)
                for t in prange(nthreads, num_threads=nthreads, schedule="static"):
                    u0 = t * ch
                    if u0 < U:
                        if floating is float:
                            _kernels.dual_runs_f32(dy, x, A, C, B, u0, min(u0 + ch, U), center,
                                           s1_out, s2_out)
                        else:
                            _kernels.dual_runs_f64(dy, x, A, C, B, u0, min(u0 + ch, U), center,
                                           s1_out, s2_out)
        return 0
    W = C * B
    rb = _row_block(A, 64)
    nblk = (A + rb - 1) // rb
    fetch = _cols_fetch(P * A * W * <Py_ssize_t>sizeof(floating), W * <Py_ssize_t>sizeof(floating))
    # One-element runs take their centres straight from center, and with one block their
    # column sums are the channels' sums, written straight into s1_out and s2_out (as
    # _stats_run): no scratch at all for batch norm 1-D's usual shapes.
    direct = B == 1 and nblk == 1
    cen_words = 0 if B == 1 else W   # the copied centres' part of the scratch
    keep = _scratch(0 if direct else cen_words + 2 * nblk * W)
    cen_p = <double *>cnp.PyArray_DATA(keep)
    if not direct:
        s1p = cen_p + cen_words
        s2p = s1p + nblk * W
    for p in range(P):
        if B == 1:
            cen_p = <double *>center + p * C
        else:
            for c in range(C):
                for j in range(B):
                    cen_p[c * B + j] = center[p * C + c]
        if direct:
            s1p, s2p = s1_out + p * C, s2_out + p * C
        xp = x + p * A * W
        gp = dy + p * A * W
        with nogil:
            if nthreads <= 1 or nblk == 1:
                for blk in range(nblk):
                    rows = min(rb, A - blk * rb)
                    if floating is float:
                        _kernels.dual_cols_f32(gp + blk * rb * W, xp + blk * rb * W, rows, W, cen_p, s1p + blk * W, s2p + blk * W, fetch, NULL if rw == NULL else rw + blk * rb)
                    else:
                        _kernels.dual_cols_f64(gp + blk * rb * W, xp + blk * rb * W, rows, W, cen_p, s1p + blk * W, s2p + blk * W, fetch, NULL if rw == NULL else rw + blk * rb)
            else:
                for blk in prange(nblk, num_threads=nthreads, schedule="static"):
                    rows = min(rb, A - blk * rb)
                    if floating is float:
                        _kernels.dual_cols_f32(gp + blk * rb * W, xp + blk * rb * W, rows, W, cen_p, s1p + blk * W, s2p + blk * W, fetch, NULL if rw == NULL else rw + blk * rb)
                    else:
                        _kernels.dual_cols_f64(gp + blk * rb * W, xp + blk * rb * W, rows, W, cen_p, s1p + blk * W, s2p + blk * W, fetch, NULL if rw == NULL else rw + blk * rb)
        if not direct:
            _fold_blocks(s1p, nblk, W)
            _fold_blocks(s2p, nblk, W)
            for c in range(C):
                s1_out[p * C + c] = _channel_total(s1p, c * B, B)
                s2_out[p * C + c] = _channel_total(s2p, c * B, B)
    return 0


def affine(const floating[::1] x, floating[::1] y, Py_ssize_t P, Py_ssize_t A, Py_ssize_t C,
           Py_ssize_t B, const floating[::1] mhi, const floating[::1] scale,
           const floating[::1] shift, int nthreads, bint callers_out=False):
    """y = (x - mhi) * scale + shift, parameters per (p, c) of (P, A, C, B)
    (normalization._affine_params).
    IN x: (P*A*C*B,), parameters (P*C,); OUT y: like x.  callers_out: y is the caller's
    out= (for the streaming-store rule, _pool.streams)."""
    _check(x.shape[0] == P * A * C * B == y.shape[0] and mhi.shape[0] == P * C
           and scale.shape[0] == P * C == shift.shape[0], "affine: inconsistent sizes")
    cdef Py_ssize_t nbytes = x.shape[0] * sizeof(floating)
    cdef int stream = streams(nbytes, 2 * nbytes, callers_out)
    if x.shape[0] == 0:
        return
    with nogil:
        _affine_run(&x[0], &y[0], P, A, C, B, &mhi[0], &scale[0], &shift[0], nthreads, stream)


cdef void _affine_run(const floating *x, floating *y, Py_ssize_t P, Py_ssize_t A, Py_ssize_t C,
                      Py_ssize_t B, const floating *mhi, const floating *scale,
                      const floating *shift, int nthreads, int stream) noexcept nogil:
    """affine on raw pointers (x not empty)."""
    cdef Py_ssize_t R = P * A * C, t, u0, ch
    if nthreads <= 1:
        if floating is float:
            _kernels.affine_f32(x, y, A, C, B, 0, R, mhi, scale, shift, stream)
        else:
            _kernels.affine_f64(x, y, A, C, B, 0, R, mhi, scale, shift, stream)
    else:
        ch = _share(R, nthreads)
        if B == 1:
            ch = (ch + 15) & ~(<Py_ssize_t>15)  # keep threads off each other's cache lines
        for t in prange(nthreads, num_threads=nthreads, schedule="static"):
            u0 = t * ch
            if u0 < R:
                if floating is float:
                    _kernels.affine_f32(x, y, A, C, B, u0, min(u0 + ch, R), mhi, scale, shift, stream)
                else:
                    _kernels.affine_f64(x, y, A, C, B, u0, min(u0 + ch, R), mhi, scale, shift, stream)


def group_forward(const floating[::1] x, floating[::1] y, Py_ssize_t G, Py_ssize_t cg,
                  Py_ssize_t hw, const floating[::1] w, const floating[::1] b, double eps,
                  double[::1] mean, double[::1] m2, int nthreads, bint callers_out=False):
    """Group norm of NCHW data in one visit per group (fn_norm_group_forward).  IN x:
    (U*cg*hw,) with U = N*G groups; w, b: (G*cg,) or None; OUT y: like x, mean and M2 of
    every group (U,), float64."""
    cdef Py_ssize_t U = mean.shape[0]
    _check(x.shape[0] == U * cg * hw == y.shape[0] and m2.shape[0] == U and cg * hw >= 1
           and U % G == 0 and (w is None or w.shape[0] == G * cg)
           and (b is None or b.shape[0] == G * cg), "group_forward: inconsistent sizes")
    cdef Py_ssize_t nbytes = x.shape[0] * sizeof(floating)
    cdef int stream = streams(nbytes, 2 * nbytes, callers_out)
    cdef const floating *wp = NULL
    cdef const floating *bp = NULL
    if U == 0:
        return
    if w is not None:
        wp = &w[0]
    if b is not None:
        bp = &b[0]
    with nogil:
        _group_forward_run(&x[0], &y[0], G, cg, hw, U, wp, bp, eps, &mean[0], &m2[0], nthreads,
                           stream)


cdef void _group_forward_run(const floating *x, floating *y, Py_ssize_t G, Py_ssize_t cg,
                             Py_ssize_t hw, Py_ssize_t U, const floating *wp, const floating *bp,
                             double eps, double *mean, double *m2, int nthreads,
                             int stream) noexcept nogil:
    cdef Py_ssize_t t, u0, ch
    if nthreads <= 1 or U == 1:
        if floating is float:
            _kernels.group_forward_f32(x, y, G, cg, hw, 0, U, wp, bp, eps, mean, m2, stream)
        else:
            _kernels.group_forward_f64(x, y, G, cg, hw, 0, U, wp, bp, eps, mean, m2, stream)
        return
    ch = _share(U, nthreads)
    for t in prange(nthreads, num_threads=nthreads, schedule="static"):
        u0 = t * ch
        if u0 < U:
            if floating is float:
                _kernels.group_forward_f32(x, y, G, cg, hw, u0, min(u0 + ch, U), wp, bp, eps,
                                           mean, m2, stream)
            else:
                _kernels.group_forward_f64(x, y, G, cg, hw, u0, min(u0 + ch, U), wp, bp, eps,
                                           mean, m2, stream)


def group_backward(const floating[::1] dy, const floating[::1] x, floating[::1] gx, Py_ssize_t G,
                   Py_ssize_t cg, Py_ssize_t hw, const floating[::1] w, const double[::1] center,
                   const floating[::1] mhi, const double[::1] rstd, double[::1] s1, double[::1] s2,
                   int nthreads):
    """Group norm backward of NCHW data, training statistics, one visit per group
    (fn_norm_group_backward).  IN dy, x: (U*cg*hw,), U = N*G groups; w: (G*cg,) or None;
    center, mhi (the mean as double and in x's type), rstd: (U,).  OUT gx: like x; s1, s2:
    (U*cg,) per (sample, channel) sums of dy and dy * (x - mean)."""
    cdef Py_ssize_t U = center.shape[0], t, u0, ch
    _check(x.shape[0] == U * cg * hw == dy.shape[0] == gx.shape[0] and cg * hw >= 1 and U % G == 0
           and mhi.shape[0] == U == rstd.shape[0] and s1.shape[0] == U * cg == s2.shape[0]
           and (w is None or w.shape[0] == G * cg), "group_backward: inconsistent sizes")
    cdef Py_ssize_t nbytes = x.shape[0] * sizeof(floating)
    cdef int stream = streams(nbytes, 3 * nbytes, False)
    cdef const floating *wp = NULL
    if U == 0:
        return
    if w is not None:
        wp = &w[0]
    with nogil:
        _group_backward_run(&dy[0], &x[0], &gx[0], G, cg, hw, U, wp, &center[0], &mhi[0], &rstd[0],
                            &s1[0], &s2[0], nthreads, stream)


cdef void _group_backward_run(const floating *dy, const floating *x, floating *gx, Py_ssize_t G,
                              Py_ssize_t cg, Py_ssize_t hw, Py_ssize_t U, const floating *wp,
                              const double *center, const floating *mhi, const double *rstd,
                              double *s1, double *s2, int nthreads, int stream) noexcept nogil:
    cdef Py_ssize_t t, u0, ch
    if nthreads <= 1 or U == 1:
        if floating is float:
            _kernels.group_backward_f32(dy, x, gx, G, cg, hw, 0, U, wp, center, mhi, rstd, s1, s2,
                                        stream)
        else:
            _kernels.group_backward_f64(dy, x, gx, G, cg, hw, 0, U, wp, center, mhi, rstd, s1, s2,
                                        stream)
        return
    ch = _share(U, nthreads)
    for t in prange(nthreads, num_threads=nthreads, schedule="static"):
        u0 = t * ch
        if u0 < U:
            if floating is float:
                _kernels.group_backward_f32(dy, x, gx, G, cg, hw, u0, min(u0 + ch, U), wp, center,
                                            mhi, rstd, s1, s2, stream)
            else:
                _kernels.group_backward_f64(dy, x, gx, G, cg, hw, u0, min(u0 + ch, U), wp, center,
                                            mhi, rstd, s1, s2, stream)


# Group norm of channels-last data, (N, hw, C) with a sample's groups runs of cg = C / G
# columns: per (sample, channel) moments by the column kernels (stats, dual_sums), merged
# per group here, then one output pass with per-(sample, channel) coefficients (affine,
# affine_grad) -- batch norm's channels-last passes with the group merge between them.  The
# fast paths and fastnorm.normalization's general path (through group_forward_cl and
# group_backward_cl) run this same code, so they give the same bits.

def group_forward_cl(const floating[::1] x, floating[::1] y, Py_ssize_t C, Py_ssize_t G,
                     const floating[::1] w, const floating[::1] b, double eps, floating[::1] mean,
                     floating[::1] rstd, int nthreads, bint callers_out=False):
    """Group norm of channels-last data (_group_cl_forward_run).  IN x: (N*hw*C,), hw >= 1;
    w, b: (C,) or None; OUT y: like x, mean and rstd: (N*G,), which give N."""
    _check(C >= 1 and 1 <= G <= C and C % G == 0 and mean.shape[0] % G == 0, "group_forward_cl: inconsistent sizes")
    cdef Py_ssize_t N = mean.shape[0] // G
    _check(1 <= N <= x.shape[0] // C and x.shape[0] % (N * C) == 0 and y.shape[0] == x.shape[0]
           and rstd.shape[0] == N * G and (w is None or w.shape[0] == C)
           and (b is None or b.shape[0] == C), "group_forward_cl: inconsistent sizes")
    cdef Py_ssize_t nbytes = x.shape[0] * sizeof(floating)
    _group_cl_forward_run(&x[0], &y[0], N, x.shape[0] // (N * C), C, G,
                          NULL if w is None else &w[0], NULL if b is None else &b[0], eps,
                          &mean[0], &rstd[0], nthreads, streams(nbytes, 2 * nbytes, callers_out))


cdef int _group_cl_forward_run(const floating *x, floating *y, Py_ssize_t N, Py_ssize_t hw,
                               Py_ssize_t C, Py_ssize_t G, const floating *w, const floating *b,
                               double eps, floating *mean_out, floating *rstd_out, int nthreads,
                               int stream) except -1:
    """Group norm of channels-last x (N, hw, C), all >= 1, G dividing C: y like x, and the
    groups' mean and rstd = 1 / sqrt(M2 / (cg * hw) + eps) (N*G,) in x's type.  A group's
    moments merge its channels' (Chan's formula, equal counts, channels in order): mean =
    sum(mean_c) / cg, M2 = sum(M2_c) + hw * sum((mean_c - mean)^2)."""
    cdef Py_ssize_t NC = N * C, cg = C // G, n, g, c, c0
    # float64 moments per (sample, channel) (later the channel's group's mean and rstd),
    # then the output pass's coefficients (a floating fits a double's slot)
    cdef cnp.ndarray keep = _scratch(5 * NC)
    cdef double *mean_c = <double *>cnp.PyArray_DATA(keep)
    cdef double *m2_c = mean_c + NC
    cdef floating *mhi = <floating *>(m2_c + NC)
    cdef floating *scale = mhi + NC
    cdef floating *shift = scale + NC
    cdef double count = <double>(cg * hw), s, q, d, mu, r
    _stats_run(x, N, hw, C, 1, mean_c, m2_c, nthreads)
    for n in range(N):
        for g in range(G):
            c0 = n * C + g * cg
            s = 0.0
            for c in range(c0, c0 + cg):
                s = s + mean_c[c]
            mu = s / <double>cg
            s = 0.0
            q = 0.0
            for c in range(c0, c0 + cg):
                d = mean_c[c] - mu
                s = s + d * d
                q = q + m2_c[c]
            r = 1.0 / sqrt((q + <double>hw * s) / count + eps)
            mean_out[n * G + g] = <floating>mu
            rstd_out[n * G + g] = <floating>r
            # the group's channels' moments are read: their slots take the group's mean and rstd
            for c in range(c0, c0 + cg):
                mean_c[c] = mu
                m2_c[c] = r
        if floating is float:
            _kernels.channel_affine_f32(C, mean_c + n * C, m2_c + n * C, w, b, mhi + n * C,
                                        scale + n * C, shift + n * C)
        else:
            _kernels.channel_affine_f64(C, mean_c + n * C, m2_c + n * C, w, b, mhi + n * C,
                                        scale + n * C, shift + n * C)
    with nogil:
        _affine_run(x, y, N, hw, C, 1, mhi, scale, shift, nthreads, stream)
    return 0


def group_backward_cl(const floating[::1] dy, const floating[::1] x, floating[::1] gx,
                      Py_ssize_t C, Py_ssize_t G, const floating[::1] w, const double[::1] center,
                      const floating[::1] mhi, const double[::1] rstd, bint want_gw, bint want_gb,
                      int nthreads):
    """Group norm backward of channels-last data, training statistics
    (_group_cl_backward_run).  IN dy, x: (N*hw*C,), hw >= 1; w: (C,) or None; center, mhi
    (the mean as double and in x's type), rstd: (N*G,), which give N.  OUT gx: like x.
    Returns (gw, gb): float64 (C,) parameter gradients, or None where not wanted."""
    _check(C >= 1 and 1 <= G <= C and C % G == 0 and center.shape[0] % G == 0,
           "group_backward_cl: inconsistent sizes")
    cdef Py_ssize_t N = center.shape[0] // G
    _check(1 <= N <= x.shape[0] // C and x.shape[0] % (N * C) == 0
           and dy.shape[0] == x.shape[0] == gx.shape[0] and mhi.shape[0] == N * G == rstd.shape[0]
           and (w is None or w.shape[0] == C), "group_backward_cl: inconsistent sizes")
    cdef Py_ssize_t nbytes = x.shape[0] * sizeof(floating)
    gw = _empty_vector(C, cnp.NPY_FLOAT64) if want_gw else None
    gb = _empty_vector(C, cnp.NPY_FLOAT64) if want_gb else None
    _group_cl_backward_run(&dy[0], &x[0], &gx[0], N, x.shape[0] // (N * C), C, G,
                           NULL if w is None else &w[0], &center[0], &mhi[0], &rstd[0],
                           <double *>_data_or_null(gw), <double *>_data_or_null(gb), nthreads,
                           streams(nbytes, 3 * nbytes, False))
    return gw, gb


cdef int _group_cl_backward_run(const floating *dy, const floating *x, floating *gx,
                                Py_ssize_t N, Py_ssize_t hw, Py_ssize_t C, Py_ssize_t G,
                                const floating *w, const double *center, const floating *mhi,
                                const double *rstd, double *sum_w, double *sum_b, int nthreads,
                                int stream) except -1:
    """Gradients of _group_cl_forward_run with its statistics (center and mhi: the groups'
    mean as double and in x's type; rstd: (N*G,)): gx = dy * w * rstd + (x - mean) * k2 + k3
    with k2 = -rstd^3 * sum(dy * w * (x - mean)) / m, k3 = -rstd * sum(dy * w) / m over the
    group's m = cg * hw elements; where not NULL, sum_w and sum_b (C,) get the parameter
    gradients (_group_param_sums)."""
    cdef Py_ssize_t NC = N * C, cg = C // G, n, g, c, c0, u
    cdef cnp.ndarray keep = _scratch(7 * NC)
    cdef double *center_c = <double *>cnp.PyArray_DATA(keep)
    cdef double *s1 = center_c + NC
    cdef double *s2 = s1 + NC
    cdef floating *k1 = <floating *>(s2 + NC)
    cdef floating *mhi_c = k1 + NC
    cdef floating *k2 = mhi_c + NC
    cdef floating *k3 = k2 + NC
    cdef double m = <double>(cg * hw), r, g1, g2, wc, k2g, k3g
    for u in range(N * G):  # each group's centre for its channels (no division per channel)
        for c in range(u * cg, u * cg + cg):
            center_c[c] = center[u]
    _dual_sums_run(dy, x, N, hw, C, 1, center_c, s1, s2, nthreads, NULL)
    for n in range(N):
        for g in range(G):
            u = n * G + g
            c0 = n * C + g * cg
            r = rstd[u]
            g1 = 0.0
            g2 = 0.0
            for c in range(c0, c0 + cg):
                wc = 1.0 if w == NULL else <double>w[c - n * C]
                g1 = g1 + wc * s1[c]
                g2 = g2 + wc * s2[c]
            k2g = -(r * r * r) * g2 / m
            k3g = -r * g1 / m
            for c in range(c0, c0 + cg):
                k1[c] = <floating>(r if w == NULL else r * <double>w[c - n * C])
                mhi_c[c] = mhi[u]
                k2[c] = <floating>k2g
                k3[c] = <floating>k3g
    with nogil:
        _affine_grad_run(dy, x, gx, N, hw, C, 1, k1, mhi_c, k2, k3, nthreads, stream)
        _group_param_sums(N, C, cg, rstd, s1, s2, sum_w, sum_b)
    return 0


cdef void _group_param_sums(Py_ssize_t N, Py_ssize_t C, Py_ssize_t cg, const double *rstd,
                            const double *s1, double *s2, double *sum_w,
                            double *sum_b) noexcept nogil:
    """Group norm's parameter gradients from the (N, C) float64 sums s1 = sum(dy) and s2 =
    sum(dy * (x - mean)) of every (sample, channel): sum_w[c] = sum over samples of
    rstd * s2 (s2 is overwritten by the products), sum_b[c] of s1, added sample after sample
    to +0.0, as NumPy's sum over axis 0 of the general channels-first path adds them (the
    products stored first, as NumPy rounds them, where a compiler could fuse them into the
    sums).  Either may be NULL: not wanted."""
    cdef Py_ssize_t u, v
    if sum_w != NULL:
        for v in range(N * C // cg):  # group v's channels (no division per channel)
            for u in range(v * cg, v * cg + cg):
                s2[u] = rstd[v] * s2[u]
        _sum_rows(N, C, s2, sum_w)
    if sum_b != NULL:
        _sum_rows(N, C, s1, sum_b)


cdef void _sum_rows(Py_ssize_t N, Py_ssize_t C, const double *rows, double *total) noexcept nogil:
    """total[c] = the sum over r of rows[r * C + c], added row after row to +0.0: the columns
    side by side, a loop gcc vectorizes (one column at a time strides through the rows).  A
    NaN total stays as it is, as a scalar add (and NumPy's) returns its first operand's NaN
    where gcc may swap a vector add's operands."""
    cdef Py_ssize_t r, c
    memset(total, 0, C * sizeof(double))
    for r in range(N):
        for c in range(C):
            total[c] = total[c] if isnan(total[c]) else total[c] + rows[r * C + c]


def affine_grad(const floating[::1] dy, const floating[::1] x, floating[::1] gx, Py_ssize_t P,
                Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, const floating[::1] k1,
                const floating[::1] mhi, const floating[::1] k2, const floating[::1] k3,
                int nthreads):
    """gx = dy * k1 + (x - mhi) * k2 + k3, parameters per (p, c) of (P, A, C, B)."""
    _check(x.shape[0] == P * A * C * B == dy.shape[0] == gx.shape[0] and k1.shape[0] == P * C
           and mhi.shape[0] == P * C == k2.shape[0] == k3.shape[0], "affine_grad: inconsistent sizes")
    cdef Py_ssize_t nbytes = x.shape[0] * sizeof(floating)
    cdef int stream = streams(nbytes, 3 * nbytes, False)
    if x.shape[0] == 0:
        return
    with nogil:
        _affine_grad_run(&dy[0], &x[0], &gx[0], P, A, C, B, &k1[0], &mhi[0], &k2[0], &k3[0],
                         nthreads, stream)


cdef void _affine_grad_run(const floating *dy, const floating *x, floating *gx, Py_ssize_t P,
                           Py_ssize_t A, Py_ssize_t C, Py_ssize_t B, const floating *k1,
                           const floating *mhi, const floating *k2, const floating *k3,
                           int nthreads, int stream) noexcept nogil:
    """affine_grad on raw pointers (x not empty)."""
    cdef Py_ssize_t R = P * A * C, t, u0, ch
    if nthreads <= 1:
        if floating is float:
            _kernels.affine_grad_f32(dy, x, gx, A, C, B, 0, R, k1, mhi, k2, k3, stream)
        else:
            _kernels.affine_grad_f64(dy, x, gx, A, C, B, 0, R, k1, mhi, k2, k3, stream)
    else:
        ch = _share(R, nthreads)
        if B == 1:
            ch = (ch + 15) & ~(<Py_ssize_t>15)
        for t in prange(nthreads, num_threads=nthreads, schedule="static"):
            u0 = t * ch
            if u0 < R:
                if floating is float:
                    _kernels.affine_grad_f32(dy, x, gx, A, C, B, u0, min(u0 + ch, R), k1, mhi, k2, k3, stream)
                else:
                    _kernels.affine_grad_f64(dy, x, gx, A, C, B, u0, min(u0 + ch, R), k1, mhi, k2, k3, stream)


cdef void _rows_forward_run(const floating *x, floating *y, Py_ssize_t M, Py_ssize_t K,
                            const floating *wp, const floating *bp, double eps, bint rms,
                            floating *mean, floating *rstd, int nthreads, int stream) noexcept nogil:
    cdef Py_ssize_t t, r0, ch
    if nthreads <= 1 or M == 1:
        if floating is float:
            _kernels.rows_forward_f32(x, y, K, 0, M, wp, bp, eps, rms, mean, rstd, stream)
        else:
            _kernels.rows_forward_f64(x, y, K, 0, M, wp, bp, eps, rms, mean, rstd, stream)
        return
    ch = _share(M, nthreads)
    for t in prange(nthreads, num_threads=nthreads, schedule="static"):
        r0 = t * ch
        if r0 < M:
            if floating is float:
                _kernels.rows_forward_f32(x, y, K, r0, min(r0 + ch, M), wp, bp, eps, rms, mean, rstd, stream)
            else:
                _kernels.rows_forward_f64(x, y, K, r0, min(r0 + ch, M), wp, bp, eps, rms, mean, rstd, stream)


cdef void _rows_backward_run(const floating *dy, const floating *x, floating *gx, Py_ssize_t M,
                             Py_ssize_t K, const floating *wp, const floating *mean,
                             const floating *rstd, bint rms, double *pw, double *pb,
                             Py_ssize_t rb, int nthreads, int stream) noexcept nogil:
    """Without parameter gradients (pw = pb = NULL) rows are split evenly over the
    threads; with them, rows go in blocks of rb and block blk sets row blk of the (nblk, K)
    partials pw/pb (either may be NULL; left uninitialized by the caller) to its column sums."""
    cdef Py_ssize_t t, r0, ch, blk, nblk
    cdef double *pwp
    cdef double *pbp
    cdef int param_pass
    if pw == NULL and pb == NULL:
        if nthreads <= 1 or M == 1:
            if floating is float:
                _kernels.rows_backward_f32(dy, x, gx, K, 0, M, wp, mean, rstd, rms, NULL, NULL, 0, stream)
            else:
                _kernels.rows_backward_f64(dy, x, gx, K, 0, M, wp, mean, rstd, rms, NULL, NULL, 0, stream)
            return
        ch = _share(M, nthreads)
        for t in prange(nthreads, num_threads=nthreads, schedule="static"):
            r0 = t * ch
            if r0 < M:
                if floating is float:
                    _kernels.rows_backward_f32(dy, x, gx, K, r0, min(r0 + ch, M), wp, mean, rstd, rms, NULL, NULL, 0, stream)
                else:
                    _kernels.rows_backward_f64(dy, x, gx, K, r0, min(r0 + ch, M), wp, mean, rstd, rms, NULL, NULL, 0, stream)
        return
    # Where the float64 kernels add the parameter gradients (the same bits either way): in
    # each row's first loop, or by a pass over every ~192 KiB of rows while they are in cache
    # (fn_norm_rows_backward; float32 always takes its own pass, with float terms added four
    # rows at a time, and ignores param_pass).  The pass pays when the rows come from memory
    # and are wide.  Measured with the float64 terms, when float32 took them too:
    # 1 thread, float32 (M, 768), both gradients, us (in the row loop -> by the pass),
    # AVX-512 on Zen 4: M = 32 8.0-8.1 -> 9.2, 1024 192-202 -> 236-238, 2048 494-616 ->
    # 478-562, 3072 1114-1238 -> 703-782, 8192 3322-3393 -> 2314-2593; (12288, 512)
    # 1734-1754 -> 1805-1838.  On Zen 3 (no AVX-512) the row loop was faster at every M,
    # through the API, paired medians of 25 interleaved rounds, row loop / pass time, AVX2
    # 1 / 2 threads: M = 128 0.88 / 0.95, 1024 0.81 / 0.92, 4096 0.86 / 0.90, 8192 0.91 /
    # 0.91; base (SSE2) 1 thread: 1024 0.91, 4096 0.91, 8192 0.90.  So set_isa leaves the
    # pass to the AVX-512 kernels.
    param_pass = K > _param_pass_min_k and 2 * M * K * <Py_ssize_t>sizeof(floating) > _param_pass_min_bytes
    nblk = (M + rb - 1) // rb
    if nthreads <= 1 or nblk == 1:
        for blk in range(nblk):
            pwp = pw + blk * K if pw != NULL else NULL
            pbp = pb + blk * K if pb != NULL else NULL
            if floating is float:
                _kernels.rows_backward_f32(dy, x, gx, K, blk * rb, min(blk * rb + rb, M), wp, mean, rstd, rms, pwp, pbp, param_pass, stream)
            else:
                _kernels.rows_backward_f64(dy, x, gx, K, blk * rb, min(blk * rb + rb, M), wp, mean, rstd, rms, pwp, pbp, param_pass, stream)
    else:
        for blk in prange(nblk, num_threads=nthreads, schedule="static"):
            pwp = pw + blk * K if pw != NULL else NULL
            pbp = pb + blk * K if pb != NULL else NULL
            if floating is float:
                _kernels.rows_backward_f32(dy, x, gx, K, blk * rb, min(blk * rb + rb, M), wp, mean, rstd, rms, pwp, pbp, param_pass, stream)
            else:
                _kernels.rows_backward_f64(dy, x, gx, K, blk * rb, min(blk * rb + rb, M), wp, mean, rstd, rms, pwp, pbp, param_pass, stream)


cdef cnp.ndarray _partials(int nd, cnp.npy_intp *dims):
    """The float64 (nblk, K) partial rows of layer norm backward's parameter gradients, left
    uninitialized: each kernel call zeroes its own row before it adds into it (and zeroes it
    again where float32's partials overflow, fn_norm_rows_backward).  Not calloc's zeros:
    their pages map the shared zero page on the first read, and the first write then takes a
    copy-on-write fault whose TLB flush interrupts every CPU the process runs on -- (384,
    16384) float32 layer norm backward with its parameter gradients took 15 ms on 2 threads
    against 7.6 ms on one, most of it there."""
    return cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT64, 0)


cdef object _block_sum(cnp.ndarray partial, int typenum):
    """Column sums of the (nblk, K) float64 block partials, added in block order, as a new
    (K,) array of typenum (_cast_sums), by _fold_blocks (which overwrites the first row)."""
    _fold_blocks(<double *>cnp.PyArray_DATA(partial), cnp.PyArray_DIM(partial, 0), cnp.PyArray_DIM(partial, 1))
    return _cast_sums(partial[0], typenum)


cdef object _cast_sums(cnp.ndarray sums, int typenum):
    """The contiguous float64 (K,) sums as a new array of typenum.  A float32 cast that
    overflows is left to NumPy, for its warning (or error, under np.errstate) as the general
    path's astype gives."""
    cdef Py_ssize_t K = cnp.PyArray_DIM(sums, 0)
    cdef double *src = <double *>cnp.PyArray_DATA(sums)
    cdef cnp.npy_intp dim = K
    cdef cnp.ndarray total = cnp.PyArray_EMPTY(1, &dim, typenum, 0)
    if typenum == cnp.NPY_FLOAT64:
        _kernels.narrow_f64(K, src, <double *>cnp.PyArray_DATA(total))
    elif _kernels.narrow_f32(K, src, <float *>cnp.PyArray_DATA(total)):
        return sums.astype(np.float32)
    return total


def rows_forward(const floating[::1] x, floating[::1] y, Py_ssize_t M, Py_ssize_t K,
                 const floating[::1] w, const floating[::1] b, double eps, bint rms,
                 floating[::1] mean, floating[::1] rstd, int nthreads, bint callers_out=False):
    """Layer norm (rms=False) or RMS norm of the rows of an (M, K) array (K >= 1).
    IN w, b: (K,) or None; OUT y: (M*K,), mean (M,; unused for RMS), rstd (M,)."""
    _check(x.shape[0] == M * K == y.shape[0] and K >= 1 and mean.shape[0] == M == rstd.shape[0]
           and (w is None or w.shape[0] == K) and (b is None or b.shape[0] == K),
           "rows_forward: inconsistent sizes")
    cdef const floating *wp = NULL
    cdef const floating *bp = NULL
    if M == 0:
        return
    if w is not None:
        wp = &w[0]
    if b is not None:
        bp = &b[0]
    cdef Py_ssize_t nbytes = x.shape[0] * sizeof(floating)
    cdef int stream = streams(nbytes, 2 * nbytes, callers_out)
    with nogil:
        _rows_forward_run(&x[0], &y[0], M, K, wp, bp, eps, rms, &mean[0], &rstd[0], nthreads, stream)


def rows_backward(const floating[::1] dy, const floating[::1] x, floating[::1] gx, Py_ssize_t M,
                  Py_ssize_t K, const floating[::1] w, const floating[::1] mean,
                  const floating[::1] rstd, bint rms, bint want_gw, bint want_gb, int nthreads):
    """Backward of rows_forward.  OUT gx: (M*K,).  Returns (gw, gb): float64 (K,) arrays
    of sum(dy * xhat) and sum(dy) over the rows, or None where not wanted."""
    _check(x.shape[0] == M * K == dy.shape[0] == gx.shape[0] and K >= 1
           and mean.shape[0] == M == rstd.shape[0] and (w is None or w.shape[0] == K),
           "rows_backward: inconsistent sizes")
    cdef const floating *wp = NULL
    cdef Py_ssize_t rb, nblk
    cdef cnp.npy_intp pdims[2]
    cdef object pw = None, pb = None
    cdef double *pwp
    cdef double *pbp
    if w is not None:
        wp = &w[0]
    if M == 0:
        return (np.zeros(K) if want_gw else None), (np.zeros(K) if want_gb else None)
    # Parameter gradients are column sums: fixed row blocks, partials added in order.
    rb = _ln_param_rows(M, K, sizeof(floating))
    nblk = (M + rb - 1) // rb
    pdims[0], pdims[1] = nblk, K
    if want_gw:
        pw = _partials(2, pdims)
    if want_gb:
        pb = _partials(2, pdims)
    pwp, pbp = <double *>_data_or_null(pw), <double *>_data_or_null(pb)
    with nogil:
        _rows_backward_run(&dy[0], &x[0], &gx[0], M, K, wp, &mean[0], &rstd[0], rms, pwp, pbp,
                           rb, nthreads, 0)
    return ((_block_sum(pw, cnp.NPY_FLOAT64) if want_gw else None),
            (_block_sum(pb, cnp.NPY_FLOAT64) if want_gb else None))


cdef void _cols_forward_run(const floating *xt, floating *yt, Py_ssize_t M, Py_ssize_t K,
                            const floating *coefs, const floating *wp, const floating *bp,
                            int nthreads, int stream) noexcept nogil:
    """The output pass of cols_forward, xt's rows split evenly over the threads; coefs: the
    (3, M) h, s, o of fn_norm_cols_coefs."""
    cdef Py_ssize_t t, k0, ch
    if nthreads <= 1:
        if floating is float:
            _kernels.cols_forward_f32(xt, yt, M, 0, K, coefs, coefs + M, coefs + 2 * M, wp, bp, stream)
        else:
            _kernels.cols_forward_f64(xt, yt, M, 0, K, coefs, coefs + M, coefs + 2 * M, wp, bp, stream)
        return
    ch = _share(K, nthreads)
    for t in prange(nthreads, num_threads=nthreads, schedule="static"):
        k0 = t * ch
        if k0 < K:
            if floating is float:
                _kernels.cols_forward_f32(xt, yt, M, k0, min(k0 + ch, K), coefs, coefs + M,
                                          coefs + 2 * M, wp, bp, stream)
            else:
                _kernels.cols_forward_f64(xt, yt, M, k0, min(k0 + ch, K), coefs, coefs + M,
                                          coefs + 2 * M, wp, bp, stream)


cdef void _cols_backward_run(const floating *dyt, const floating *xt, floating *gxt, Py_ssize_t M,
                             Py_ssize_t K, const floating *wp, const floating *coefs,
                             const floating *rstd, double *gw, double *gb, int nthreads,
                             int stream) noexcept nogil:
    """The gradient pass of cols_backward, xt's rows split evenly over the threads (each row's
    parameter gradients are its own sums: the same bits at any split); coefs: the (4, M)
    mean (0 for RMS norm), s, k2, k3."""
    cdef Py_ssize_t t, k0, ch
    if nthreads <= 1:
        if floating is float:
            _kernels.cols_backward_f32(dyt, xt, gxt, M, 0, K, wp, coefs, coefs + M, coefs + 2 * M,
                                       coefs + 3 * M, rstd, gw, gb, stream)
        else:
            _kernels.cols_backward_f64(dyt, xt, gxt, M, 0, K, wp, coefs, coefs + M, coefs + 2 * M,
                                       coefs + 3 * M, rstd, gw, gb, stream)
        return
    ch = _share(K, nthreads)
    for t in prange(nthreads, num_threads=nthreads, schedule="static"):
        k0 = t * ch
        if k0 < K:
            if floating is float:
                _kernels.cols_backward_f32(dyt, xt, gxt, M, k0, min(k0 + ch, K), wp, coefs,
                                           coefs + M, coefs + 2 * M, coefs + 3 * M, rstd, gw, gb,
                                           stream)
            else:
                _kernels.cols_backward_f64(dyt, xt, gxt, M, k0, min(k0 + ch, K), wp, coefs,
                                           coefs + M, coefs + 2 * M, coefs + 3 * M, rstd, gw, gb,
                                           stream)


cdef int _cols_forward_core(const floating *xt, floating *yt, Py_ssize_t M, Py_ssize_t K,
                            const floating *wp, const floating *bp, double eps, bint rms,
                            floating *mean, floating *rstd, int nthreads, int stream,
                            bint keep_gil) except -1:
    """cols_forward on raw pointers (sizes checked by the caller, M >= 1, K >= 2; mean
    unused for RMS norm): what the general and the fast path call.  keep_gil: the call is
    below the threading grain (one thread), and its coefficients and output pass keep the
    GIL, as the row kernels' fast path there."""
    cdef cnp.ndarray sums = _scratch(2 * M)   # mean and M2, or for RMS norm sum and sum of squares
    cdef double *mean_d = <double *>cnp.PyArray_DATA(sums)
    cdef cnp.npy_intp ncoefs = 3 * M
    cdef cnp.ndarray coefs = cnp.PyArray_EMPTY(1, &ncoefs, cnp.NPY_FLOAT32 if floating is float
                                               else cnp.NPY_FLOAT64, 0)
    cdef floating *cp = <floating *>cnp.PyArray_DATA(coefs)
    _stats_run(xt, 1, K, M, 1, mean_d, mean_d + M, nthreads, rms)
    if keep_gil:
        _cols_forward_finish(xt, yt, M, K, wp, bp, eps, rms, mean, rstd, mean_d, cp, 1, stream)
    else:
        with nogil:
            _cols_forward_finish(xt, yt, M, K, wp, bp, eps, rms, mean, rstd, mean_d, cp, nthreads,
                                 stream)
    return 0


cdef inline void _cols_forward_finish(const floating *xt, floating *yt, Py_ssize_t M, Py_ssize_t K,
                                      const floating *wp, const floating *bp, double eps, bint rms,
                                      floating *mean, floating *rstd, const double *sums,
                                      floating *coefs, int nthreads, int stream) noexcept nogil:
    """The coefficients (fn_norm_cols_coefs) from the (2, M) float64 sums, then the output."""
    if floating is float:
        _kernels.cols_coefs_f32(M, K, sums, sums + M, eps, rms, mean, rstd, coefs, coefs + M,
                                coefs + 2 * M)
    else:
        _kernels.cols_coefs_f64(M, K, sums, sums + M, eps, rms, mean, rstd, coefs, coefs + M,
                                coefs + 2 * M)
    _cols_forward_run(xt, yt, M, K, coefs, wp, bp, nthreads, stream)


cdef int _cols_backward_core(const floating *dyt, const floating *xt, floating *gxt, Py_ssize_t M,
                             Py_ssize_t K, const floating *wp, const floating *mean,
                             const floating *rstd, double *gw, double *gb, int nthreads,
                             int stream, bint keep_gil) except -1:
    """cols_backward on raw pointers (sizes checked by the caller, M >= 1, K >= 2; mean NULL
    for RMS norm, gw / gb NULL where not wanted; keep_gil as _cols_forward_core's)."""
    cdef cnp.ndarray sums = _scratch(3 * M)   # centres, a1, a2
    cdef double *center = <double *>cnp.PyArray_DATA(sums)
    # mean (zeros for RMS norm, whose rows are centred on 0), s, k2, k3
    cdef cnp.npy_intp ncoefs = 4 * M
    cdef cnp.ndarray coefs = cnp.PyArray_ZEROS(1, &ncoefs, cnp.NPY_FLOAT32 if floating is float
                                               else cnp.NPY_FLOAT64, 0)
    cdef floating *cp = <floating *>cnp.PyArray_DATA(coefs)
    cdef Py_ssize_t m
    for m in range(M):
        if mean != NULL:
            cp[m] = mean[m]
        center[m] = <double>cp[m]
    _dual_sums_run(dyt, xt, 1, K, M, 1, center, center + M, center + 2 * M, nthreads, wp)
    if keep_gil:
        _cols_backward_finish(dyt, xt, gxt, M, K, wp, rstd, mean == NULL, center + M, cp, gw, gb,
                              1, stream)
    else:
        with nogil:
            _cols_backward_finish(dyt, xt, gxt, M, K, wp, rstd, mean == NULL, center + M, cp, gw,
                                  gb, nthreads, stream)
    return 0


cdef inline void _cols_backward_finish(const floating *dyt, const floating *xt, floating *gxt,
                                       Py_ssize_t M, Py_ssize_t K, const floating *wp,
                                       const floating *rstd, bint rms, const double *sums,
                                       floating *coefs, double *gw, double *gb, int nthreads,
                                       int stream) noexcept nogil:
    """The coefficients (fn_norm_cols_grad_coefs) from the (2, M) float64 sums a1, a2, then
    the gradient pass."""
    if floating is float:
        _kernels.cols_grad_coefs_f32(M, K, rstd, sums, sums + M, rms, coefs + M, coefs + 2 * M,
                                     coefs + 3 * M)
    else:
        _kernels.cols_grad_coefs_f64(M, K, rstd, sums, sums + M, rms, coefs + M, coefs + 2 * M,
                                     coefs + 3 * M)
    _cols_backward_run(dyt, xt, gxt, M, K, wp, coefs, rstd, gw, gb, nthreads, stream)


def cols_forward(const floating[::1] xt, floating[::1] yt, Py_ssize_t M, Py_ssize_t K,
                 const floating[::1] w, const floating[::1] b, double eps, bint rms,
                 floating[::1] mean, floating[::1] rstd, int nthreads, bint callers_out=False):
    """rows_forward of the M rows of a Fortran-order (M, K) x (K >= 2), read in place as
    xt = x.T, the C-order (K, M) array whose columns are x's rows: the statistics are batch
    norm 1-D's column sums (_stats_run), then a pass over xt's rows writes yt = y.T.
    IN xt: (K*M,), w, b: (K,) or None; OUT yt: like xt, mean (M,; unused for RMS), rstd (M,)."""
    _check(xt.shape[0] == M * K == yt.shape[0] and K >= 2 and mean.shape[0] == M == rstd.shape[0]
           and (w is None or w.shape[0] == K) and (b is None or b.shape[0] == K),
           "cols_forward: inconsistent sizes")
    if M == 0:
        return
    cdef Py_ssize_t nbytes = xt.shape[0] * sizeof(floating)
    _cols_forward_core(&xt[0], &yt[0], M, K, NULL if w is None else &w[0],
                       NULL if b is None else &b[0], eps, rms, &mean[0], &rstd[0], nthreads,
                       streams(nbytes, 2 * nbytes, callers_out), False)


def cols_backward(const floating[::1] dyt, const floating[::1] xt, floating[::1] gxt, Py_ssize_t M,
                  Py_ssize_t K, const floating[::1] w, const floating[::1] mean,
                  const floating[::1] rstd, bint rms, bint want_gw, bint want_gb, int nthreads):
    """rows_backward of a Fortran-order (M, K) x (K >= 2) read as cols_forward reads it:
    dyt, xt and gxt the C-order transposes, (K*M,); mean (M,; ignored for RMS norm).  The
    sums per row of x are batch norm 1-D's column sums of dy * w (_dual_sums_run with row
    weights), then a pass over xt's rows writes gxt and sums each of its rows' parameter
    gradients.  Returns (gw, gb): float64 (K,) arrays, or None where not wanted."""
    _check(xt.shape[0] == M * K == dyt.shape[0] == gxt.shape[0] and K >= 2
           and mean.shape[0] == M == rstd.shape[0] and (w is None or w.shape[0] == K),
           "cols_backward: inconsistent sizes")
    if M == 0:
        return (np.zeros(K) if want_gw else None), (np.zeros(K) if want_gb else None)
    cdef object gw = np.empty(K) if want_gw else None
    cdef object gb = np.empty(K) if want_gb else None
    cdef Py_ssize_t nbytes = xt.shape[0] * sizeof(floating)
    _cols_backward_core(&dyt[0], &xt[0], &gxt[0], M, K, NULL if w is None else &w[0],
                        NULL if rms else &mean[0], &rstd[0], <double *>_data_or_null(gw),
                        <double *>_data_or_null(gb), nthreads, streams(nbytes, 3 * nbytes, False),
                        False)
    return gw, gb


# ---------------------------------------------------------------------------- fast path
# Small layer/RMS, batch and group norm calls are dominated by Python-level validation and
# temporaries.  The common call -- aligned, C-contiguous, native float32/float64 arrays of
# exactly matching shapes and dtypes, arguments of the exact Python types expected (an int
# or a tuple of ints for normalized_shape, an int num_groups, a finite float eps >= 0, bool
# flags), out= only where the kernel can write into it directly -- is checked here at C
# level and run on the same runners as the general path, with the same float64 arithmetic
# around them (so results are bit-identical).  Anything else returns None, and
# fastnorm.normalization takes the general path, which validates everything and produces
# every error message.

cdef inline bint _plain_shape(object a, int typenum, int ndim, cnp.npy_intp *dims):
    """a is a plain array of typenum with exactly the shape dims[:ndim]."""
    cdef int d
    if not plain(a, typenum) or cnp.PyArray_NDIM(<cnp.ndarray>a) != ndim:
        return False
    for d in range(ndim):
        if cnp.PyArray_DIMS(<cnp.ndarray>a)[d] != dims[d]:
            return False
    return True


cdef inline bint _plain_vector(object a, int typenum, cnp.npy_intp k):
    """a is None or a plain (k,) array of typenum."""
    return a is None or _plain_shape(a, typenum, 1, &k)


cdef inline Py_ssize_t _product(int count, cnp.npy_intp *dims):
    cdef Py_ssize_t p = 1
    cdef int j
    for j in range(count):
        p *= dims[j]
    return p


cdef inline int _trailing_axes(object normalized_shape, int nd, cnp.npy_intp *dims):
    """How many trailing axes of dims[:nd] normalized_shape (an int or a tuple of ints) names,
    or 0 where it names none."""
    cdef int nk, j
    if type(normalized_shape) is not tuple:
        normalized_shape = (normalized_shape,)
    nk = len(<tuple>normalized_shape)
    if nk == 0 or nk > nd:
        return 0
    for j in range(nk):
        s = (<tuple>normalized_shape)[j]
        # compared as Python ints: a huge value must not overflow a C integer
        if type(s) is not int or s != dims[nd - nk + j]:
            return 0
    return nk


cdef inline int _fast_typenum(object x):
    """typenum of a plain non-empty float32/float64 array of >= 1 dimensions, else -1."""
    cdef int typenum = plain_float(x)
    if typenum < 0:
        return -1
    if cnp.PyArray_NDIM(<cnp.ndarray>x) < 1 or cnp.PyArray_SIZE(<cnp.ndarray>x) == 0:
        return -1
    return typenum


cdef inline bint _reads_apart(cnp.ndarray out, object a):
    """a (None or an array the kernel reads while it writes out) shares no byte with out."""
    return a is None or not overlap(out, <cnp.ndarray>a)


cdef object _fast_output(cnp.ndarray x, object out, object p, object q, object r, object s):
    """Where a fast path writes y: output_for(x, out) (_shared.pxd), except that out must
    also share no byte with the vectors p, q, r, s the kernels read while they write it;
    else None, and the general path validates and copies."""
    y = output_for(x, out)
    if y is None or out is None:
        return y
    cdef cnp.ndarray o = <cnp.ndarray>y
    if not (_reads_apart(o, p) and _reads_apart(o, q) and _reads_apart(o, r) and _reads_apart(o, s)):
        return None
    return o


cdef inline void *_data_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


# Fortran-order rows read as columns from this many rows (normalization.py says why; it reads
# COLS_MIN_ROWS).  Fewer rows of at most _FEW_ROWS_COPY_MAX elements in all go through NumPy's
# C-order copy in the fast path (below _arrays._REORDER_MIN, where NumPy's copy is as fast as
# the block transposes); larger ones take the general path, whose copies are block transposes
# ((8, 2**20) float32 through NumPy's copies: 22.8 ms forward, 9.3 ms by block transposes).
cdef Py_ssize_t _COLS_MIN_ROWS = 16
COLS_MIN_ROWS = _COLS_MIN_ROWS
cdef Py_ssize_t _FEW_ROWS_COPY_MAX = 1 << 13


cdef inline int _fortran_typenum(object x):
    """typenum of a non-empty 2-D float32/float64 array in Fortran order only (x.T plain: aligned,
    native byte order), else -1: what the Fortran-order fast paths read as x.T."""
    if type(x) is not cnp.ndarray:
        return -1
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(a)
    if (cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_IS_F_CONTIGUOUS(a)
            or not (typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64)
            or not cnp.PyArray_ISALIGNED(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or cnp.PyArray_SIZE(a) == 0):
        return -1
    return typenum


cdef object _rows_forward_fortran(cnp.ndarray xa, Py_ssize_t M, Py_ssize_t K, object weight,
                                  object bias, double eps, bint rms, object out, Py_ssize_t grain,
                                  int typenum):
    """rows_forward_fast of a Fortran-order (M, K) x (_fortran_typenum; weight and bias
    checked), read as x.T by _cols_forward_core, as the general path's cols_forward: y in x's
    layout, into out where out is a Fortran-order array the kernel can write directly (else
    None: the general path)."""
    cdef cnp.npy_intp tdims[2]
    cdef cnp.ndarray y
    if out is None:
        tdims[0], tdims[1] = K, M
        y = pooled_empty(2, tdims, typenum, cnp.PyArray_DATA(xa)).T
    elif (_fortran_typenum(out) == typenum and same_shape(xa, <cnp.ndarray>out)
          and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out) and same_or_apart(xa, <cnp.ndarray>out)
          and _reads_apart(<cnp.ndarray>out, weight) and _reads_apart(<cnp.ndarray>out, bias)):
        y = <cnp.ndarray>out
    else:
        return None
    cdef cnp.npy_intp m = M
    mean = None if rms else cnp.PyArray_EMPTY(1, &m, typenum, 0)
    cdef cnp.ndarray rstd = cnp.PyArray_EMPTY(1, &m, typenum, 0)
    cdef void *meanp = NULL if rms else cnp.PyArray_DATA(<cnp.ndarray>mean)
    cdef Py_ssize_t nbytes = cnp.PyArray_NBYTES(xa)
    cdef int stream = streams(nbytes, 2 * nbytes, out is not None)
    cdef int nthreads = threads_for(M * K, grain)
    if typenum == cnp.NPY_FLOAT32:
        _cols_forward_core[float](<const float *>cnp.PyArray_DATA(xa), <float *>cnp.PyArray_DATA(y), M, K,
                                  <const float *>_data_or_null(weight), <const float *>_data_or_null(bias),
                                  eps, rms, <float *>meanp, <float *>cnp.PyArray_DATA(rstd), nthreads,
                                  stream, M * K < grain)
    else:
        _cols_forward_core[double](<const double *>cnp.PyArray_DATA(xa), <double *>cnp.PyArray_DATA(y), M,
                                   K, <const double *>_data_or_null(weight),
                                   <const double *>_data_or_null(bias), eps, rms, <double *>meanp,
                                   <double *>cnp.PyArray_DATA(rstd), nthreads, stream, M * K < grain)
    return y, mean, rstd


cdef object _rows_backward_fortran(cnp.ndarray ga, cnp.ndarray xa, object weight, object mean,
                                   object rstd, object bias, Py_ssize_t grain, int typenum):
    """rows_backward_fast of a Fortran-order (M, K) x and grad_output (all checked), read as
    their transposes by _cols_backward_core: grad_x in x's layout, the parameter gradients
    (K,) of x's dtype."""
    cdef Py_ssize_t M = cnp.PyArray_DIM(xa, 0), K = cnp.PyArray_DIM(xa, 1)
    cdef cnp.npy_intp tdims[2]
    tdims[0], tdims[1] = K, M
    cdef cnp.ndarray gxt = pooled_empty(2, tdims, typenum, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(ga))
    cdef cnp.npy_intp k = K
    cdef object gw = cnp.PyArray_EMPTY(1, &k, cnp.NPY_FLOAT64, 0) if weight is not None else None
    cdef object gb = cnp.PyArray_EMPTY(1, &k, cnp.NPY_FLOAT64, 0) if bias is not None else None
    cdef Py_ssize_t nbytes = cnp.PyArray_NBYTES(xa)
    cdef int stream = streams(nbytes, 3 * nbytes, False)
    cdef int nthreads = threads_for(M * K, grain)
    if typenum == cnp.NPY_FLOAT32:
        _cols_backward_core[float](<const float *>cnp.PyArray_DATA(ga), <const float *>cnp.PyArray_DATA(xa),
                                   <float *>cnp.PyArray_DATA(gxt), M, K, <const float *>_data_or_null(weight),
                                   <const float *>_data_or_null(mean), <const float *>cnp.PyArray_DATA(<cnp.ndarray>rstd),
                                   <double *>_data_or_null(gw), <double *>_data_or_null(gb), nthreads, stream,
                                   M * K < grain)
    else:
        _cols_backward_core[double](<const double *>cnp.PyArray_DATA(ga), <const double *>cnp.PyArray_DATA(xa),
                                    <double *>cnp.PyArray_DATA(gxt), M, K, <const double *>_data_or_null(weight),
                                    <const double *>_data_or_null(mean),
                                    <const double *>cnp.PyArray_DATA(<cnp.ndarray>rstd),
                                    <double *>_data_or_null(gw), <double *>_data_or_null(gb), nthreads, stream,
                                    M * K < grain)
    return (gxt.T, None if gw is None else _cast_sums(<cnp.ndarray>gw, typenum),
            None if gb is None else _cast_sums(<cnp.ndarray>gb, typenum))


def rows_forward_fast(object x, object normalized_shape, object weight, object bias, object eps,
                      bint rms, object out, Py_ssize_t grain):
    """(y, mean, rstd) of layer norm (rms=False; mean is None for RMS) over the trailing
    axes normalized_shape names, for plain arrays (see above), mean and rstd of x's leading
    shape (0-d over all of x's axes); eps None means the machine epsilon of x's dtype; y
    is out when given.  A 2-D Fortran-order x normalized over its last axis is read as x.T
    (_rows_forward_fortran) from _COLS_MIN_ROWS rows, and below that, if small, copied into C
    order and y copied back.  None when the general path is needed."""
    cdef int typenum = _fast_typenum(x)
    cdef bint fortran = typenum < 0
    if fortran:
        typenum = _fortran_typenum(x)
        if typenum < 0:
            return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(xa)
    cdef int nk = _trailing_axes(normalized_shape, nd, dims), lead = nd - nk
    cdef double eps_d
    if not (nk > 0 and (weight is None or _plain_shape(weight, typenum, nk, dims + lead))
            and (bias is None or _plain_shape(bias, typenum, nk, dims + lead))):
        return None
    if eps is None and rms:
        eps_d = FLT_EPSILON if typenum == cnp.NPY_FLOAT32 else DBL_EPSILON
    elif type(eps) is float and isfinite(<double>eps) and <double>eps >= 0:
        eps_d = <double>eps
    else:
        return None
    cdef Py_ssize_t n = cnp.PyArray_SIZE(xa), K = _product(nk, dims + lead), M = n // K
    if fortran:
        if nk != 1:
            return None
        if M >= _COLS_MIN_ROWS:
            return _rows_forward_fortran(xa, M, K, weight, bias, eps_d, rms, out, grain, typenum)
        if out is not None or n > _FEW_ROWS_COPY_MAX:
            return None
        # few rows: through a C-order copy, the result copied back into x's layout (as the
        # general path), NumPy's copies of small arrays
        result = rows_forward_fast(cnp.PyArray_NewCopy(xa, cnp.NPY_CORDER), normalized_shape,
                                   weight, bias, eps, rms, None, grain)
        return (cnp.PyArray_NewCopy(<cnp.ndarray>result[0], cnp.NPY_FORTRANORDER),) + result[1:]
    y_obj = _fast_output(xa, out, weight, bias, None, None)
    if y_obj is None:
        return None
    cdef cnp.ndarray y = <cnp.ndarray>y_obj
    cdef int nthreads = threads_for(n, grain)
    # RMS norm has no mean: the kernel does not write it, so none is allocated.
    mean = None if rms else cnp.PyArray_EMPTY(lead, dims, typenum, 0)
    cdef cnp.ndarray rstd = cnp.PyArray_EMPTY(lead, dims, typenum, 0)
    cdef void *meanp = NULL if rms else cnp.PyArray_DATA(<cnp.ndarray>mean)
    cdef const void *wp = _data_or_null(weight)
    cdef const void *bp = _data_or_null(bias)
    cdef Py_ssize_t nbytes = cnp.PyArray_NBYTES(xa)
    cdef int stream = streams(nbytes, 2 * nbytes, out is not None)
    # Below the threading grain the call runs on one thread and keeps the GIL (as the
    # activations' fast paths): releasing and retaking it cost 35-50 ns a call.
    if n < grain:
        _rows_forward_typed(typenum, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(y), M, K, wp, bp, eps_d,
                            rms, meanp, cnp.PyArray_DATA(rstd), 1, stream)
    else:
        with nogil:
            _rows_forward_typed(typenum, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(y), M, K, wp, bp,
                                eps_d, rms, meanp, cnp.PyArray_DATA(rstd), nthreads, stream)
    return y, mean, rstd


cdef inline void _rows_forward_typed(int typenum, const void *x, void *y, Py_ssize_t M, Py_ssize_t K,
                                     const void *wp, const void *bp, double eps, bint rms,
                                     void *mean, void *rstd, int nthreads, int stream) noexcept nogil:
    if typenum == cnp.NPY_FLOAT32:
        _rows_forward_run[float](<const float *>x, <float *>y, M, K, <const float *>wp,
                                 <const float *>bp, eps, rms, <float *>mean, <float *>rstd, nthreads,
                                 stream)
    else:
        _rows_forward_run[double](<const double *>x, <double *>y, M, K, <const double *>wp,
                                  <const double *>bp, eps, rms, <double *>mean, <double *>rstd,
                                  nthreads, stream)


cdef inline void _rows_backward_typed(int typenum, const void *dy, const void *x, void *gx,
                                      Py_ssize_t M, Py_ssize_t K, const void *wp, const void *mp,
                                      const void *rp, bint rms, double *pwp, double *pbp,
                                      Py_ssize_t rb, int nthreads, int stream) noexcept nogil:
    if typenum == cnp.NPY_FLOAT32:
        _rows_backward_run[float](<const float *>dy, <const float *>x, <float *>gx, M, K,
                                  <const float *>wp, <const float *>mp, <const float *>rp, rms, pwp,
                                  pbp, rb, nthreads, stream)
    else:
        _rows_backward_run[double](<const double *>dy, <const double *>x, <double *>gx, M, K,
                                   <const double *>wp, <const double *>mp, <const double *>rp, rms,
                                   pwp, pbp, rb, nthreads, stream)


def rows_backward_fast(object grad_output, object x, object normalized_shape, object weight,
                       object mean, object rstd, object bias, bint rms, Py_ssize_t grain):
    """(grad_x, grad_weight, grad_bias) of rows_forward_fast for plain arrays: mean and
    rstd of x's shape without the normalized axes (mean None for RMS), grad_weight only
    with weight and grad_bias only with bias (which is only a marker), both in x's dtype
    and the parameters' shape.  Float32 rows take their sums in float stretches
    (rows_grad_sums), with or without parameter gradients.  A 2-D Fortran-order x (and grad_output) normalized over its last axis
    is read as x.T (_rows_backward_fortran) from _COLS_MIN_ROWS rows, and below that, if small,
    copied into C order and grad_x copied back.  None when the general path is needed."""
    cdef int typenum = _fast_typenum(x)
    cdef bint fortran = typenum < 0
    if fortran:
        typenum = _fortran_typenum(x)
        if typenum < 0:
            return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(xa)
    cdef int nk = _trailing_axes(normalized_shape, nd, dims), lead = nd - nk
    if fortran:
        if not (nk == 1 and _fortran_typenum(grad_output) == typenum
                and same_shape(xa, <cnp.ndarray>grad_output)
                and (weight is None or _plain_shape(weight, typenum, 1, dims + 1))
                and (bias is None or _plain_shape(bias, typenum, 1, dims + 1))
                and _plain_shape(rstd, typenum, 1, dims)
                and (_plain_shape(mean, typenum, 1, dims) if not rms else mean is None)):
            return None
        if cnp.PyArray_DIM(xa, 0) >= _COLS_MIN_ROWS:
            return _rows_backward_fortran(<cnp.ndarray>grad_output, xa, weight, mean, rstd, bias,
                                          grain, typenum)
        if cnp.PyArray_SIZE(xa) > _FEW_ROWS_COPY_MAX:
            return None
        result = rows_backward_fast(cnp.PyArray_NewCopy(<cnp.ndarray>grad_output, cnp.NPY_CORDER),
                                    cnp.PyArray_NewCopy(xa, cnp.NPY_CORDER), normalized_shape,
                                    weight, mean, rstd, bias, rms, grain)
        return (cnp.PyArray_NewCopy(<cnp.ndarray>result[0], cnp.NPY_FORTRANORDER),) + result[1:]
    if not (nk > 0 and _plain_shape(grad_output, typenum, nd, dims)
            and (weight is None or _plain_shape(weight, typenum, nk, dims + lead))
            and (bias is None or _plain_shape(bias, typenum, nk, dims + lead))
            and _plain_shape(rstd, typenum, lead, dims)
            and (_plain_shape(mean, typenum, lead, dims) if not rms else mean is None)):
        return None
    cdef bint want_gw = weight is not None, want_gb = bias is not None
    cdef Py_ssize_t n = cnp.PyArray_SIZE(xa), K = _product(nk, dims + lead), M = n // K
    cdef Py_ssize_t rb = _ln_param_rows(M, K, cnp.PyArray_ITEMSIZE(xa)), nblk = (M + rb - 1) // rb
    cdef int nthreads = threads_for(n, grain)
    cdef cnp.ndarray gx = pooled_empty(nd, dims, typenum, cnp.PyArray_DATA(xa),
                                       cnp.PyArray_DATA(<cnp.ndarray>grad_output))
    cdef Py_ssize_t nbytes = n * cnp.PyArray_ITEMSIZE(xa)
    cdef int stream = streams(nbytes, 3 * nbytes, False)
    cdef cnp.npy_intp pdims[2]
    cdef object pw = None, pb = None
    pdims[0], pdims[1] = nblk, K
    if want_gw:
        pw = _partials(2, pdims)
    if want_gb:
        pb = _partials(2, pdims)
    cdef double *pwp = <double *>_data_or_null(pw)
    cdef double *pbp = <double *>_data_or_null(pb)
    cdef const void *wp = _data_or_null(weight)
    cdef const void *mp = cnp.PyArray_DATA(<cnp.ndarray>(rstd if rms else mean))
    cdef const void *rp = cnp.PyArray_DATA(<cnp.ndarray>rstd)
    cdef const void *gp = cnp.PyArray_DATA(<cnp.ndarray>grad_output)
    if n < grain:  # one thread, the GIL kept (as rows_forward_fast)
        _rows_backward_typed(typenum, gp, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(gx), M, K, wp, mp,
                             rp, rms, pwp, pbp, rb, 1, stream)
    else:
        with nogil:
            _rows_backward_typed(typenum, gp, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(gx), M, K, wp,
                                 mp, rp, rms, pwp, pbp, rb, nthreads, stream)
    gw = _block_sum(pw, typenum) if want_gw else None
    gb = _block_sum(pb, typenum) if want_gb else None
    if nk > 1:  # (K,) sums shaped as the parameters
        gw = None if gw is None else gw.reshape(weight.shape)
        gb = None if gb is None else gb.reshape(bias.shape)
    return gx, gw, gb


cdef inline bint _exact_bool(object v):
    return type(v) is bool


cdef inline cnp.ndarray _empty_vector(cnp.npy_intp n, int typenum):
    return cnp.PyArray_EMPTY(1, &n, typenum, 0)


def batch_norm_fast(object x, object weight, object bias, object running_mean, object running_var,
                    object training, object momentum, object eps, object channels_last,
                    object out, Py_ssize_t grain):
    """(y, mean, rstd) of batch norm for plain arrays (see above) with momentum a float (the
    cumulative average's factor 1 / num_batches_tracked as fastnorm.normalization.batch_norm
    passes it, or the momentum itself); the same kernels and the same float64 per-channel
    arithmetic, operation for operation, as fastnorm.normalization.batch_norm, so the
    results are bit-identical.  None when the general path is needed."""
    cdef int typenum = _fast_typenum(x)
    if typenum < 0 or cnp.PyArray_NDIM(<cnp.ndarray>x) < 2:
        return None
    if not (_exact_bool(training) and _exact_bool(channels_last)):
        return None
    if not (type(eps) is float and isfinite(<double>eps) and <double>eps >= 0):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(xa)
    cdef bint last = channels_last is True
    cdef cnp.npy_intp C = dims[nd - 1] if last else dims[1]
    cdef Py_ssize_t size = cnp.PyArray_SIZE(xa), n = size // C
    cdef bint running = running_mean is not None
    cdef double f = 0.0, eps_d = <double>eps
    if not (_plain_vector(weight, typenum, C) and _plain_vector(bias, typenum, C)):
        return None
    if running:
        if not (_plain_shape(running_mean, typenum, 1, &C) and _plain_shape(running_var, typenum, 1, &C)
                and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_mean)
                and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_var)
                and not overlap(<cnp.ndarray>running_mean, <cnp.ndarray>running_var)):
            return None
    elif running_var is not None or training is False:
        return None
    if training is True:
        if n <= 1:
            return None
        if running:
            if not (type(momentum) is float and isfinite(<double>momentum)):
                return None
            f = <double>momentum
    # (P, A, C, B): reduce over A and B per channel
    cdef Py_ssize_t A, B
    if last or nd == 2:
        A, B = n, 1
    else:
        A, B = dims[0], size // (dims[0] * C)
    y_obj = _fast_output(xa, out, weight, bias, running_mean, running_var)
    if y_obj is None:
        return None
    cdef cnp.ndarray y = <cnp.ndarray>y_obj
    cdef int nthreads = threads_for(size, grain)
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(xa)
    # One scratch block per call: float64 mean and M2 per channel, then the output pass's
    # (mhi, scale, shift) in x's type.
    cdef cnp.ndarray keep = _scratch(2 * C + (3 * C * itemsize + 7) // 8)
    cdef double *mp = <double *>cnp.PyArray_DATA(keep)
    cdef double *m2p = mp + C
    cdef void *mhi_p = m2p + C
    cdef void *scale_p = <char *>mhi_p + C * itemsize
    cdef void *shift_p = <char *>scale_p + C * itemsize
    cdef cnp.ndarray rstd = _empty_vector(C, typenum), mean_c = _empty_vector(C, typenum)
    if _warm_serial(training is True, A, B, size * itemsize):
        nthreads = 1
    cdef Py_ssize_t nblk = _channel_blocks(A, C, B, itemsize, 1, nthreads) if training is True else 0
    cdef int stream = streams(size * itemsize, 2 * size * itemsize, out is not None)
    # Raw pointers for the runners, on either path (the non-block path's stats and affine
    # without the def functions' typed memoryviews: about 2 us per call each, against a
    # kernel of a few us for small arrays).
    cdef const void *x_p = cnp.PyArray_DATA(xa)
    cdef void *y_p = cnp.PyArray_DATA(y)
    cdef void *rm_p = _data_or_null(running_mean)
    cdef void *rv_p = _data_or_null(running_var)
    cdef const void *w_p = _data_or_null(weight)
    cdef const void *b_p = _data_or_null(bias)
    cdef void *mean_p = cnp.PyArray_DATA(mean_c)
    cdef void *rstd_p = cnp.PyArray_DATA(rstd)
    if nblk > 0:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                _bn_forward_blocks[float](
                    <const float *>x_p, <float *>y_p, A, C, B, nblk, n, running, f, eps_d, mp, m2p,
                    <float *>rm_p, <float *>rv_p, <const float *>w_p, <const float *>b_p, <float *>mean_p,
                    <float *>rstd_p, <float *>mhi_p, <float *>scale_p, <float *>shift_p, stream, nthreads)
            else:
                _bn_forward_blocks[double](
                    <const double *>x_p, <double *>y_p, A, C, B, nblk, n, running, f, eps_d, mp, m2p,
                    <double *>rm_p, <double *>rv_p, <const double *>w_p, <const double *>b_p,
                    <double *>mean_p, <double *>rstd_p, <double *>mhi_p, <double *>scale_p,
                    <double *>shift_p, stream, nthreads)
        return y, mean_c, rstd
    if training is True:
        if typenum == cnp.NPY_FLOAT32:
            _stats_run[float](<const float *>x_p, 1, A, C, B, mp, m2p, nthreads)
        else:
            _stats_run[double](<const double *>x_p, 1, A, C, B, mp, m2p, nthreads)
    if typenum == cnp.NPY_FLOAT32:
        _bn_channels[float](C, n, training is True, running, f, eps_d, mp, m2p, <float *>rm_p,
                            <float *>rv_p, <const float *>w_p, <const float *>b_p, <float *>mean_p,
                            <float *>rstd_p, <float *>mhi_p, <float *>scale_p, <float *>shift_p)
    else:
        _bn_channels[double](C, n, training is True, running, f, eps_d, mp, m2p, <double *>rm_p,
                             <double *>rv_p, <const double *>w_p, <const double *>b_p,
                             <double *>mean_p, <double *>rstd_p, <double *>mhi_p,
                             <double *>scale_p, <double *>shift_p)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _affine_run[float](<const float *>x_p, <float *>y_p, 1, A, C, B, <const float *>mhi_p,
                               <const float *>scale_p, <const float *>shift_p, nthreads, stream)
        else:
            _affine_run[double](<const double *>x_p, <double *>y_p, 1, A, C, B, <const double *>mhi_p,
                                <const double *>scale_p, <const double *>shift_p, nthreads, stream)
    return y, mean_c, rstd


cdef void _bn_forward_blocks(const floating *x, floating *y, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
                             Py_ssize_t nblk, Py_ssize_t n, bint running, double f, double eps,
                             double *mean_d, double *m2, floating *rm, floating *rv, const floating *w,
                             const floating *b, floating *mean_out, floating *rstd_out, floating *mhi,
                             floating *scale, floating *shift, int stream, int nthreads) noexcept nogil:
    """Batch norm training forward of channels-first (A, C, B) data by nblk blocks of channels
    (see _channel_blocks), each block's statistics and then its output pass in the same
    thread; per channel the same sums, in the same order, and the same arithmetic as stats,
    _bn_channels and affine over all channels."""
    cdef Py_ssize_t blk
    if nthreads <= 1:
        for blk in range(nblk):
            _bn_forward_block(x, y, A, C, B, blk * C // nblk, (blk + 1) * C // nblk, n, running, f, eps,
                              mean_d, m2, rm, rv, w, b, mean_out, rstd_out, mhi, scale, shift, stream)
    else:
        for blk in prange(nblk, num_threads=nthreads, schedule="static"):
            _bn_forward_block(x, y, A, C, B, blk * C // nblk, (blk + 1) * C // nblk, n, running, f, eps,
                              mean_d, m2, rm, rv, w, b, mean_out, rstd_out, mhi, scale, shift, stream)


cdef void _bn_forward_block(const floating *x, floating *y, Py_ssize_t A, Py_ssize_t C, Py_ssize_t B,
                            Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t n, bint running, double f,
                            double eps, double *mean_d, double *m2, floating *rm, floating *rv,
                            const floating *w, const floating *b, floating *mean_out,
                            floating *rstd_out, floating *mhi, floating *scale, floating *shift,
                            int stream) noexcept nogil:
    """Channels c0..c1-1 of _bn_forward_blocks."""
    cdef Py_ssize_t a
    cdef const floating *wc = NULL
    cdef const floating *bc = NULL
    if w != NULL:
        wc = w + c0
    if b != NULL:
        bc = b + c0
    if floating is float:
        _kernels.stats_runs_f32(x, A, C, B, c0, c1, mean_d, m2)
    else:
        _kernels.stats_runs_f64(x, A, C, B, c0, c1, mean_d, m2)
    _bn_channels(c1 - c0, n, True, running, f, eps, mean_d + c0, m2 + c0,
                 NULL if rm == NULL else rm + c0, NULL if rv == NULL else rv + c0,
                 wc, bc, mean_out + c0, rstd_out + c0, mhi + c0, scale + c0, shift + c0)
    for a in range(A):
        if floating is float:
            _kernels.affine_f32(x, y, A, C, B, a * C + c0, a * C + c1, mhi, scale, shift, stream)
        else:
            _kernels.affine_f64(x, y, A, C, B, a * C + c0, a * C + c1, mhi, scale, shift, stream)


cdef void _bn_channels(Py_ssize_t C, Py_ssize_t n, bint training, bint running, double f,
                       double eps, double *mean_d, const double *m2, floating *rm, floating *rv,
                       const floating *w, const floating *b, floating *mean_out,
                       floating *rstd_out, floating *mhi, floating *scale,
                       floating *shift) noexcept nogil:
    """Per-channel statistics of batch norm in float64 (the kernel fn_norm_bn_channels),
    rounded as the NumPy expressions of fastnorm.normalization.batch_norm round them:
    running update, rstd, and the output pass's (mhi, scale, shift)
    (normalization._affine_params; w and b may be NULL, rm and rv where not read)."""
    if floating is float:
        _kernels.bn_channels_f32(C, n, training, running, f, eps, mean_d, m2, rm, rv, w, b,
                                 mean_out, rstd_out, mhi, scale, shift)
    else:
        _kernels.bn_channels_f64(C, n, training, running, f, eps, mean_d, m2, rm, rv, w, b,
                                 mean_out, rstd_out, mhi, scale, shift)


def group_norm_fast(object x, object num_groups, object weight, object bias, object eps,
                    object channels_last, object out, Py_ssize_t grain, object running_mean=None,
                    object running_var=None, object momentum=None):
    """(y, mean, rstd) of group norm of plain arrays (see above), channels first or last,
    num_groups an int dividing the channels; the same kernels as
    fastnorm.normalization.group_norm and the same float64 arithmetic for rstd, so the
    results are bit-identical.  Instance norm (channels first, a group per channel, more
    than one spatial element) may pass running statistics to update with factor momentum
    (a float), as fastnorm.normalization.instance_norm does (_instance_running_update).
    None when the general path is needed (which also raises every error)."""
    cdef int typenum = _fast_typenum(x)
    if typenum < 0 or cnp.PyArray_NDIM(<cnp.ndarray>x) < 2 or not _exact_bool(channels_last):
        return None
    if not (type(eps) is float and isfinite(<double>eps) and <double>eps >= 0):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(xa)
    cdef bint last = channels_last is True
    cdef cnp.npy_intp N = dims[0], C = dims[cnp.PyArray_NDIM(xa) - 1] if last else dims[1]
    if type(num_groups) is not int or not 1 <= num_groups <= C or C % num_groups != 0:
        return None
    if not (_plain_vector(weight, typenum, C) and _plain_vector(bias, typenum, C)):
        return None
    cdef Py_ssize_t size = cnp.PyArray_SIZE(xa), G = num_groups
    cdef Py_ssize_t U = N * G, cg = C // G, hw = size // (N * C), u
    cdef bint running = running_mean is not None or running_var is not None
    cdef double f = 0.0
    if running:
        if (last or G != C or hw < 2 or not (type(momentum) is float and isfinite(<double>momentum))
                or running_mean is None or running_var is None
                or not (_plain_shape(running_mean, typenum, 1, &C) and _plain_shape(running_var, typenum, 1, &C)
                        and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_mean)
                        and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_var)
                        and not overlap(<cnp.ndarray>running_mean, <cnp.ndarray>running_var))):
            return None
        f = <double>momentum
    # (the channels-last output pass reads coefficients of its own, not weight and bias)
    y_obj = _fast_output(xa, out, None if last else weight, None if last else bias, running_mean,
                         running_var)
    if y_obj is None:
        return None
    cdef cnp.ndarray y = <cnp.ndarray>y_obj
    cdef int nthreads = threads_for(size, grain)
    cdef Py_ssize_t nbytes = size * cnp.PyArray_ITEMSIZE(xa)
    cdef int stream = streams(nbytes, 2 * nbytes, out is not None)
    cdef cnp.npy_intp stat_dims[2]
    stat_dims[0], stat_dims[1] = N, G
    cdef cnp.ndarray mean = cnp.PyArray_EMPTY(2, stat_dims, typenum, 0)
    cdef cnp.ndarray rstd = cnp.PyArray_EMPTY(2, stat_dims, typenum, 0)
    cdef const void *x_p = cnp.PyArray_DATA(xa)
    cdef void *y_p = cnp.PyArray_DATA(y)
    cdef const void *w_p = _data_or_null(weight)
    cdef const void *b_p = _data_or_null(bias)
    cdef void *mean_p = cnp.PyArray_DATA(mean)
    cdef void *rstd_p = cnp.PyArray_DATA(rstd)
    cdef double eps_d = <double>eps, count = <double>(cg * hw)
    if last:
        if typenum == cnp.NPY_FLOAT32:
            _group_cl_forward_run[float](<const float *>x_p, <float *>y_p, N, hw, C, G,
                                         <const float *>w_p, <const float *>b_p, eps_d,
                                         <float *>mean_p, <float *>rstd_p, nthreads, stream)
        else:
            _group_cl_forward_run[double](<const double *>x_p, <double *>y_p, N, hw, C, G,
                                          <const double *>w_p, <const double *>b_p, eps_d,
                                          <double *>mean_p, <double *>rstd_p, nthreads, stream)
        return y, mean, rstd
    cdef cnp.ndarray mean_d = _empty_vector(U, cnp.NPY_FLOAT64)
    cdef cnp.ndarray m2_d = _empty_vector(U, cnp.NPY_FLOAT64)
    cdef double *mp = <double *>cnp.PyArray_DATA(mean_d)
    cdef double *m2p = <double *>cnp.PyArray_DATA(m2_d)
    with nogil:
        # rstd as normalization._rstd computes it: 1 / sqrt(M2 / count + eps) in float64
        if typenum == cnp.NPY_FLOAT32:
            _group_forward_run[float](<const float *>x_p, <float *>y_p, G, cg, hw, U,
                                      <const float *>w_p, <const float *>b_p, eps_d, mp, m2p,
                                      nthreads, stream)
            for u in range(U):
                (<float *>mean_p)[u] = <float>mp[u]
                (<float *>rstd_p)[u] = <float>(1.0 / sqrt(m2p[u] / count + eps_d))
        else:
            _group_forward_run[double](<const double *>x_p, <double *>y_p, G, cg, hw, U,
                                       <const double *>w_p, <const double *>b_p, eps_d, mp, m2p,
                                       nthreads, stream)
            for u in range(U):
                (<double *>mean_p)[u] = mp[u]
                (<double *>rstd_p)[u] = 1.0 / sqrt(m2p[u] / count + eps_d)
    if running:
        _instance_running_update(typenum, N, C, hw, mp, m2p, f, running_mean, running_var)
    return y, mean, rstd


def instance_batch_stats(const double[::1] mean, const double[::1] m2, Py_ssize_t C, Py_ssize_t hw):
    """Instance norm's batch statistics for its running statistics: the average over the N
    samples of the instance means and of the unbiased instance variances M2 / (hw - 1),
    float64 (C,) each.  IN mean, m2: (N*C,) float64, which give N; hw >= 2."""
    _check(C >= 1 and hw >= 2 and mean.shape[0] % C == 0 and mean.shape[0] >= C
           and m2.shape[0] == mean.shape[0], "instance_batch_stats: inconsistent sizes")
    cdef Py_ssize_t N = mean.shape[0] // C
    a = _empty_vector(C, cnp.NPY_FLOAT64)
    v = _empty_vector(C, cnp.NPY_FLOAT64)
    _instance_batch_stats(N, C, hw, &mean[0], &m2[0], <double *>cnp.PyArray_DATA(a),
                          <double *>cnp.PyArray_DATA(v))
    return a, v


cdef void _instance_batch_stats(Py_ssize_t N, Py_ssize_t C, Py_ssize_t hw, const double *mean,
                                const double *m2, double *avg_mean, double *avg_var) noexcept nogil:
    """instance_batch_stats on raw pointers: sums over the samples in order from +0.0, then
    divided by N."""
    cdef Py_ssize_t n, c
    cdef double a, v
    for c in range(C):
        a = 0.0
        v = 0.0
        for n in range(N):
            a = a + mean[n * C + c]
            v = v + m2[n * C + c] / <double>(hw - 1)
        avg_mean[c] = a / <double>N
        avg_var[c] = v / <double>N


cdef void _instance_running_update(int typenum, Py_ssize_t N, Py_ssize_t C, Py_ssize_t hw,
                                   const double *mean, const double *m2, double f,
                                   cnp.ndarray running_mean, cnp.ndarray running_var):
    """The running statistics updated with instance_batch_stats (_running_step)."""
    cdef cnp.ndarray keep = _scratch(2 * C)
    cdef double *avg = <double *>cnp.PyArray_DATA(keep)
    _instance_batch_stats(N, C, hw, mean, m2, avg, avg + C)
    if typenum == cnp.NPY_FLOAT32:
        _running_update[float](C, f, avg, avg + C, <float *>cnp.PyArray_DATA(running_mean),
                               <float *>cnp.PyArray_DATA(running_var))
    else:
        _running_update[double](C, f, avg, avg + C, <double *>cnp.PyArray_DATA(running_mean),
                                <double *>cnp.PyArray_DATA(running_var))


cdef void _running_update(Py_ssize_t C, double f, const double *batch_mean, const double *batch_var,
                          floating *rm, floating *rv) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        rm[c] = <floating>fn_running_step(<double>rm[c], f, batch_mean[c])
        rv[c] = <floating>fn_running_step(<double>rv[c], f, batch_var[c])


def group_norm_backward_fast(object grad_output, object x, object num_groups, object weight,
                             object mean, object rstd, object channels_last, object bias,
                             Py_ssize_t grain):
    """(grad_x, grad_weight, grad_bias) of group_norm_fast for plain arrays, channels first
    or last: mean and rstd (N, num_groups) as it returned them, grad_weight only with weight
    and grad_bias only with bias (a marker of x's dtype here), by the same kernels and the
    same column sums (dual_sums), sample after sample, as fastnorm.normalization's general
    path (so bit-identical).  None when the general path is needed."""
    cdef int typenum = _fast_typenum(x)
    if typenum < 0 or cnp.PyArray_NDIM(<cnp.ndarray>x) < 2 or not _exact_bool(channels_last):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(xa)
    cdef bint last = channels_last is True
    cdef cnp.npy_intp N = dims[0], C = dims[nd - 1] if last else dims[1]
    # (One channel, channels first: the general path's sums over samples are NumPy's
    # pairwise 1-D sums.)
    if (type(num_groups) is not int or not 1 <= num_groups <= C or C % num_groups != 0
            or (C == 1 and not last)):
        return None
    cdef cnp.npy_intp stat_dims[2]
    stat_dims[0], stat_dims[1] = N, num_groups
    if not (_plain_shape(grad_output, typenum, nd, dims) and _plain_vector(weight, typenum, C)
            and _plain_vector(bias, typenum, C) and _plain_shape(mean, typenum, 2, stat_dims)
            and _plain_shape(rstd, typenum, 2, stat_dims)):
        return None
    cdef Py_ssize_t size = cnp.PyArray_SIZE(xa), G = num_groups
    cdef Py_ssize_t U = N * G, cg = C // G, hw = size // (N * C)
    cdef int nthreads = threads_for(size, grain)
    cdef Py_ssize_t nbytes = size * cnp.PyArray_ITEMSIZE(xa)
    cdef cnp.ndarray gx = pooled_empty(nd, dims, typenum, cnp.PyArray_DATA(xa),
                                       cnp.PyArray_DATA(<cnp.ndarray>grad_output),
                                       last and _whole_page_rows(C * cnp.PyArray_ITEMSIZE(xa)))
    cdef int stream = streams(nbytes, 3 * nbytes, False)  # after the allocation it asks about
    cdef cnp.ndarray center = cnp.PyArray_Cast(<cnp.ndarray>mean, cnp.NPY_FLOAT64)
    cdef cnp.ndarray rstd_d = cnp.PyArray_Cast(<cnp.ndarray>rstd, cnp.NPY_FLOAT64)
    cdef bint want_gw = weight is not None, want_gb = bias is not None
    sum_w = _empty_vector(C, cnp.NPY_FLOAT64) if want_gw else None
    sum_b = _empty_vector(C, cnp.NPY_FLOAT64) if want_gb else None
    cdef double *cp = <double *>cnp.PyArray_DATA(center)
    cdef double *rp = <double *>cnp.PyArray_DATA(rstd_d)
    cdef const void *g_p = cnp.PyArray_DATA(<cnp.ndarray>grad_output)
    cdef const void *x_p = cnp.PyArray_DATA(xa)
    cdef void *gx_p = cnp.PyArray_DATA(gx)
    cdef const void *w_p = _data_or_null(weight)
    cdef const void *mean_p = cnp.PyArray_DATA(<cnp.ndarray>mean)
    cdef double *sw = <double *>_data_or_null(sum_w)
    cdef double *sb = <double *>_data_or_null(sum_b)
    cdef double *s1p
    cdef double *s2p
    if last:  # its per-(sample, channel) sums in a scratch of its own
        if typenum == cnp.NPY_FLOAT32:
            _group_cl_backward_run[float](<const float *>g_p, <const float *>x_p, <float *>gx_p, N, hw,
                                          C, G, <const float *>w_p, cp, <const float *>mean_p, rp,
                                          sw, sb, nthreads, stream)
        else:
            _group_cl_backward_run[double](<const double *>g_p, <const double *>x_p, <double *>gx_p, N,
                                           hw, C, G, <const double *>w_p, cp, <const double *>mean_p,
                                           rp, sw, sb, nthreads, stream)
    else:
        sums = _scratch(2 * N * C)
        s1p = <double *>cnp.PyArray_DATA(<cnp.ndarray>sums)
        s2p = s1p + N * C
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                _group_backward_run[float](<const float *>g_p, <const float *>x_p, <float *>gx_p, G,
                                           cg, hw, U, <const float *>w_p, cp, <const float *>mean_p,
                                           rp, s1p, s2p, nthreads, stream)
            else:
                _group_backward_run[double](<const double *>g_p, <const double *>x_p, <double *>gx_p,
                                            G, cg, hw, U, <const double *>w_p, cp,
                                            <const double *>mean_p, rp, s1p, s2p, nthreads, stream)
            _group_param_sums(N, C, cg, rp, s1p, s2p, sw, sb)
    return (gx, _cast_sums(sum_w, typenum) if want_gw else None,
            _cast_sums(sum_b, typenum) if want_gb else None)


def batch_norm_backward_fast(object grad_output, object x, object weight, object mean, object rstd,
                             object training, object channels_last, object bias, Py_ssize_t grain):
    """(grad_x, grad_weight, grad_bias) of batch norm for plain arrays: the same kernels and
    the same float64 per-channel arithmetic as fastnorm.normalization.batch_norm_backward,
    so the results are bit-identical.  None when the general path is needed."""
    cdef int typenum = _fast_typenum(x)
    if typenum < 0 or cnp.PyArray_NDIM(<cnp.ndarray>x) < 2:
        return None
    if not (_exact_bool(training) and _exact_bool(channels_last)):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(xa)
    cdef bint last = channels_last is True
    cdef cnp.npy_intp C = dims[nd - 1] if last else dims[1]
    cdef Py_ssize_t size = cnp.PyArray_SIZE(xa), n = size // C
    if not (_plain_shape(grad_output, typenum, nd, dims) and _plain_vector(weight, typenum, C)
            and _plain_vector(bias, typenum, C) and _plain_shape(mean, typenum, 1, &C)
            and _plain_shape(rstd, typenum, 1, &C)):
        return None
    cdef Py_ssize_t A, B
    if last or nd == 2:
        A, B = n, 1
    else:
        A, B = dims[0], size // (dims[0] * C)
    cdef int nthreads = threads_for(size, grain)
    cdef cnp.ndarray ga = <cnp.ndarray>grad_output
    cdef cnp.ndarray mean_d = cnp.PyArray_Cast(<cnp.ndarray>mean, cnp.NPY_FLOAT64)
    cdef cnp.ndarray rstd_d = cnp.PyArray_Cast(<cnp.ndarray>rstd, cnp.NPY_FLOAT64)
    cdef cnp.ndarray s1 = _empty_vector(C, cnp.NPY_FLOAT64), s2 = _empty_vector(C, cnp.NPY_FLOAT64)
    cdef cnp.ndarray k1 = _empty_vector(C, typenum), k2 = _empty_vector(C, typenum)
    cdef cnp.ndarray k3 = _empty_vector(C, typenum)
    cdef cnp.ndarray gx
    cdef int stream
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(xa)
    if _warm_serial(training is True, A, B, 2 * size * itemsize):
        nthreads = 1
    cdef Py_ssize_t nblk = _channel_blocks(A, C, B, itemsize, 2, nthreads)
    # Raw pointers for the runners, on either path (the non-block path's dual sums and
    # gradient pass without the def functions' typed memoryviews, as in batch_norm_fast).
    cdef const void *g_p = cnp.PyArray_DATA(ga)
    cdef const void *x_p = cnp.PyArray_DATA(xa)
    cdef void *gx_p
    cdef const void *w_p = _data_or_null(weight)
    cdef const void *mean_p = cnp.PyArray_DATA(<cnp.ndarray>mean)
    cdef double *mean_dp = <double *>cnp.PyArray_DATA(mean_d)
    cdef double *rstd_dp = <double *>cnp.PyArray_DATA(rstd_d)
    cdef double *s1_p = <double *>cnp.PyArray_DATA(s1)
    cdef double *s2_p = <double *>cnp.PyArray_DATA(s2)
    cdef void *k1_p = cnp.PyArray_DATA(k1)
    cdef void *k2_p = cnp.PyArray_DATA(k2)
    cdef void *k3_p = cnp.PyArray_DATA(k3)
    cdef bint train = training is True
    if nblk > 0:
        gx = pooled_empty(nd, dims, typenum, x_p, g_p)
        stream = streams(size * itemsize, 3 * size * itemsize, False)
        gx_p = cnp.PyArray_DATA(gx)
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                _bn_backward_blocks[float](
                    <const float *>g_p, <const float *>x_p, <float *>gx_p, A, C, B, nblk, n, train,
                    <const float *>w_p, <const float *>mean_p, mean_dp, rstd_dp, s1_p, s2_p,
                    <float *>k1_p, <float *>k2_p, <float *>k3_p, stream, nthreads)
            else:
                _bn_backward_blocks[double](
                    <const double *>g_p, <const double *>x_p, <double *>gx_p, A, C, B, nblk, n, train,
                    <const double *>w_p, <const double *>mean_p, mean_dp, rstd_dp, s1_p, s2_p,
                    <double *>k1_p, <double *>k2_p, <double *>k3_p, stream, nthreads)
        return (gx,) + _bn_param_grads(weight is not None, bias is not None, rstd_d, s1, s2, typenum)
    if typenum == cnp.NPY_FLOAT32:
        _dual_sums_run[float](<const float *>g_p, <const float *>x_p, 1, A, C, B, mean_dp, s1_p, s2_p,
                              nthreads, NULL)
        _bn_backward_channels[float](C, n, train, <const float *>w_p, rstd_dp, s1_p, s2_p,
                                     <float *>k1_p, <float *>k2_p, <float *>k3_p)
    else:
        _dual_sums_run[double](<const double *>g_p, <const double *>x_p, 1, A, C, B, mean_dp, s1_p,
                               s2_p, nthreads, NULL)
        _bn_backward_channels[double](C, n, train, <const double *>w_p, rstd_dp, s1_p, s2_p,
                                      <double *>k1_p, <double *>k2_p, <double *>k3_p)
    gx = pooled_empty(nd, dims, typenum, x_p, g_p, B == 1 and _whole_page_rows(C * itemsize))
    stream = streams(size * itemsize, 3 * size * itemsize, False)
    gx_p = cnp.PyArray_DATA(gx)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            _affine_grad_run[float](<const float *>g_p, <const float *>x_p, <float *>gx_p, 1, A, C, B,
                                    <const float *>k1_p, <const float *>mean_p, <const float *>k2_p,
                                    <const float *>k3_p, nthreads, stream)
        else:
            _affine_grad_run[double](<const double *>g_p, <const double *>x_p, <double *>gx_p, 1, A, C, B,
                                     <const double *>k1_p, <const double *>mean_p, <const double *>k2_p,
                                     <const double *>k3_p, nthreads, stream)
    return (gx,) + _bn_param_grads(weight is not None, bias is not None, rstd_d, s1, s2, typenum)


cdef tuple _bn_param_grads(bint want_gw, bint want_gb, cnp.ndarray rstd_d, cnp.ndarray s1,
                           cnp.ndarray s2, int typenum):
    """Batch norm's (grad_weight, grad_bias) from the per-channel float64 sums, as the general
    path's (rstd * s2).astype and s1.astype give them (_cast_sums; None where not wanted).  s2
    is overwritten by the products."""
    cdef Py_ssize_t c
    cdef double *r = <double *>cnp.PyArray_DATA(rstd_d)
    cdef double *b = <double *>cnp.PyArray_DATA(s2)
    if want_gw:
        for c in range(cnp.PyArray_DIM(s2, 0)):
            b[c] = r[c] * b[c]
    return (_cast_sums(s2, typenum) if want_gw else None,
            _cast_sums(s1, typenum) if want_gb else None)


cdef void _bn_backward_blocks(const floating *dy, const floating *x, floating *gx, Py_ssize_t A,
                              Py_ssize_t C, Py_ssize_t B, Py_ssize_t nblk, Py_ssize_t n, bint training,
                              const floating *w, const floating *mean, const double *mean_d,
                              const double *rstd_d, double *s1, double *s2, floating *k1,
                              floating *k2, floating *k3, int stream, int nthreads) noexcept nogil:
    """Batch norm backward of channels-first (A, C, B) data by nblk blocks of channels (see
    _channel_blocks), each block's sums and then its gradient pass in the same thread; threads
    take whole blocks.  Per channel the same sums in the same order and the same per-element
    arithmetic as dual_sums and then affine_grad over all channels, so the same bits."""
    cdef Py_ssize_t blk
    if nthreads <= 1:
        for blk in range(nblk):
            _bn_backward_block(dy, x, gx, A, C, B, blk * C // nblk, (blk + 1) * C // nblk, n, training,
                               w, mean, mean_d, rstd_d, s1, s2, k1, k2, k3, stream)
    else:
        for blk in prange(nblk, num_threads=nthreads, schedule="static"):
            _bn_backward_block(dy, x, gx, A, C, B, blk * C // nblk, (blk + 1) * C // nblk, n, training,
                               w, mean, mean_d, rstd_d, s1, s2, k1, k2, k3, stream)


cdef void _bn_backward_block(const floating *dy, const floating *x, floating *gx, Py_ssize_t A,
                             Py_ssize_t C, Py_ssize_t B, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t n,
                             bint training, const floating *w, const floating *mean,
                             const double *mean_d, const double *rstd_d, double *s1, double *s2,
                             floating *k1, floating *k2, floating *k3, int stream) noexcept nogil:
    """Channels c0..c1-1 of _bn_backward_blocks."""
    cdef Py_ssize_t a
    cdef const floating *wc = NULL
    if w != NULL:
        wc = w + c0
    if floating is float:
        _kernels.dual_runs_f32(dy, x, A, C, B, c0, c1, mean_d, s1, s2)
    else:
        _kernels.dual_runs_f64(dy, x, A, C, B, c0, c1, mean_d, s1, s2)
    _bn_backward_channels(c1 - c0, n, training, wc, rstd_d + c0, s1 + c0,
                          s2 + c0, k1 + c0, k2 + c0, k3 + c0)
    for a in range(A):
        if floating is float:
            _kernels.affine_grad_f32(dy, x, gx, A, C, B, a * C + c0, a * C + c1, k1, mean, k2, k3, stream)
        else:
            _kernels.affine_grad_f64(dy, x, gx, A, C, B, a * C + c0, a * C + c1, k1, mean, k2, k3, stream)


cdef void _bn_backward_channels(Py_ssize_t C, Py_ssize_t n, bint training, const floating *w,
                                const double *rstd_d, const double *s1, const double *s2,
                                floating *k1, floating *k2, floating *k3) noexcept nogil:
    """Per-channel coefficients of batch norm backward in float64 (the kernel
    fn_norm_bn_backward_channels), rounded as the NumPy expressions of
    fastnorm.normalization.batch_norm_backward: gx = dy * k1 + (x - mean) * k2 + k3."""
    if floating is float:
        _kernels.bn_backward_channels_f32(C, n, training, w, rstd_d, s1, s2, k1, k2, k3)
    else:
        _kernels.bn_backward_channels_f64(C, n, training, w, rstd_d, s1, s2, k1, k2, k3)
