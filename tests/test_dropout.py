"""dropout / dropout_backward against the NumPy oracle (built on np.random.Philox),
on every kernel variant, thread count and memory layout."""
import contextlib
import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

import fastnorm
from fastnorm import DropoutMask, dropout, dropout_backward
from fastnorm import reference as ref
from fastnorm import _config

from _placement import Pages
from conftest import NUMPY_ONLY, count_fast_calls

SEED = (0x1234 << 64) | 0xDEADBEEF


def blocks(size):
    return -(-size // 16)


def variants():
    """(backend, isa) pairs available here, for tests that cannot take the fixture."""
    out = []
    if _config.compiled_available() and not NUMPY_ONLY:
        out += [("cython", isa) for isa in _config._runnable_isas()]
    out.append(("numpy", None))
    return out


@contextlib.contextmanager
def variant(name, isa):
    previous = fastnorm.isa()
    with fastnorm.use_backend(name):
        if isa is not None:
            fastnorm.set_isa(isa)
        try:
            yield
        finally:
            if isa is not None:
                fastnorm.set_isa(previous)


def keep_by_hand(size, p, seed, offset):
    """The documented rule, element by element in Python, from NumPy's Philox words."""
    words = np.random.Philox(key=seed, counter=offset).random_raw(4 * blocks(size))
    t = round(p * 65536)
    return np.array([(int(words[i // 4]) >> (16 * (i % 4))) & 0xFFFF >= t for i in range(size)],
                    dtype=bool)


# ---------------------------------------------------------------- the oracle itself

@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_reference_follows_the_documented_rule(p):
    x = np.ones((5, 13))
    _, mask = ref.dropout(x, p, seed=SEED, offset=7)
    np.testing.assert_array_equal(mask.numpy().ravel(), keep_by_hand(x.size, p, SEED, 7))


def test_philox_counter_and_key_conventions():
    # Block b of the stream is Philox(counter = offset + 1 + b): starting one counter
    # later drops exactly the first four words; the key is (low word, high word).
    a = np.random.Philox(key=SEED, counter=10).random_raw(8)
    b = np.random.Philox(key=SEED, counter=11).random_raw(4)
    np.testing.assert_array_equal(a[4:], b)
    assert list(np.random.Philox(key=SEED).state["state"]["key"]) == [0xDEADBEEF, 0x1234]


# ---------------------------------------------------------------- against the oracle

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (16,), (17,), (3, 65), (64, 129), (5, 0, 3),
                                   (2, 3, 4, 5), (300_001,)])
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.97, 1.0])
def test_matches_oracle(shape, dtype, p, backend, num_threads, rng):
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y, mask = dropout(x, p, seed=SEED, offset=3)
    y_ref, mask_ref = ref.dropout(x, p, seed=SEED, offset=3)
    assert y.dtype == x.dtype and y.shape == x.shape and isinstance(mask, DropoutMask)
    np.testing.assert_array_equal(mask.packed, mask_ref.packed)
    np.testing.assert_array_equal(mask.numpy(), mask_ref.numpy())
    np.testing.assert_array_equal(y, y_ref)
    gx = dropout_backward(g, mask)
    assert gx.dtype == g.dtype and gx.shape == g.shape
    np.testing.assert_array_equal(gx, ref.dropout_backward(g, mask_ref))


@st.composite
def strided_arrays(draw):
    """Arrays of random shape viewed through transposes, Fortran order, steps and reversals."""
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9))
    base = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1e3, 1e3, width=32)))
    x = base.astype(dtype)
    if draw(st.booleans()):
        x = x.T
    if draw(st.booleans()):
        x = np.asfortranarray(x)
    axis = draw(st.integers(0, x.ndim - 1))
    step = draw(st.sampled_from([1, 2, -1, -2]))
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, step)
    return x[tuple(index)]


P_VALUES = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1 / 65536, 1 - 1 / 65536]),
                     st.floats(0, 1, allow_nan=False))


@given(x=strided_arrays(), p=P_VALUES, seed=st.integers(0, 2**128 - 1),
       offset=st.integers(0, 2**64 - 64) | st.integers(0, 100), threads=st.sampled_from([1, 2]))
def test_any_layout_matches_oracle(x, p, seed, offset, threads):
    offset = min(offset, 2**64 - blocks(x.size))
    expected_keep = keep_by_hand(x.size, p, seed, offset).reshape(x.shape)
    y_ref, mask_ref = ref.dropout(np.ascontiguousarray(x), p, seed=seed, offset=offset)
    np.testing.assert_array_equal(mask_ref.numpy(), expected_keep)
    g = (x[..., ::-1] * 0.5 + 1).astype(x.dtype)
    previous = fastnorm.set_num_threads(threads)
    try:
        for name, isa in variants():
            with variant(name, isa):
                y, mask = dropout(x, p, seed=seed, offset=offset)
                gx = dropout_backward(g, mask)
            np.testing.assert_array_equal(mask.numpy(), expected_keep)
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(gx, ref.dropout_backward(np.ascontiguousarray(g), mask_ref))
            assert y.dtype == x.dtype and gx.dtype == x.dtype
    finally:
        fastnorm.set_num_threads(previous)


def test_mask_independent_of_backend_threads_and_layout(rng):
    x = rng.standard_normal((64, 1000)).astype(np.float32)
    masks = []
    previous = fastnorm.set_num_threads(None)
    try:
        for threads in (1, 2):
            fastnorm.set_num_threads(threads)
            for name, isa in variants():
                with variant(name, isa):
                    for view in (x, np.asfortranarray(x), x.T.copy().T):
                        masks.append(dropout(view, 0.3, seed=99, offset=5)[1].packed)
    finally:
        fastnorm.set_num_threads(previous)
    for m in masks[1:]:
        np.testing.assert_array_equal(m, masks[0])


# ---------------------------------------------------------------- semantics

@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_kept_fraction_within_five_sigma(p, backend):
    n = 1_000_000
    _, mask = dropout(np.ones(n, np.float32), p, seed=2024)
    keep_prob = 1 - round(p * 65536) / 65536
    sigma = math.sqrt(n * keep_prob * (1 - keep_prob))
    assert abs(mask.numpy().sum() - n * keep_prob) < 5 * sigma
    assert abs(keep_prob - (1 - p)) <= 2**-17


def test_bits_are_balanced_across_fields(backend):
    # Each of the four 16-bit fields of a word decides its own element: a field
    # wired wrongly (say, always the low one) would skew one residue class mod 4.
    n = 1 << 20
    keep = dropout(np.ones(n, np.float32), 0.5, seed=7)[1].numpy()
    for r in range(16):
        frac = keep[r::16].mean()
        assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / (n // 16))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_scaling(dtype, p, backend, rng):
    x = (rng.standard_normal(10_000) + 3).astype(dtype)
    y, mask = dropout(x, p, seed=1)
    keep = mask.numpy()
    assert 0 < keep.sum() < keep.size
    np.testing.assert_array_equal(y[~keep], 0)
    rtol = {np.float16: 2e-3, np.float32: 2e-7, np.float64: 4e-16}[dtype]
    expected = x[keep].astype(np.float64) / (1 - p)
    np.testing.assert_allclose(y[keep].astype(np.float64), expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_p_zero_is_identity_and_p_one_is_zeros(dtype, backend, rng):
    x = rng.standard_normal((33, 7)).astype(dtype)
    y, mask = dropout(x, 0.0, seed=5)
    np.testing.assert_array_equal(y, x)
    assert mask.numpy().all()
    y, mask = dropout(x, 1.0, seed=5)
    np.testing.assert_array_equal(y, np.zeros_like(x))
    assert not mask.numpy().any()
    g = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(dropout_backward(g, mask), np.zeros_like(g))


def test_nan_and_inf_are_multiplied_not_selected(backend):
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 8, dtype=np.float32)
    y, mask = dropout(x, 1.0, seed=3)  # all dropped: NaN * 0, Inf * 0 = NaN, as PyTorch
    assert np.isnan(y[x != 1]).all() and (y[x == 1] == 0).all()
    y, mask = dropout(x, 0.0, seed=3)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("p", [0.25, 0.6])
def test_backward_equals_grad_times_mask_over_keep(p, backend, rng):
    x = rng.standard_normal((40, 50))
    g = rng.standard_normal((40, 50))
    _, mask = dropout(x, p, seed=11)
    np.testing.assert_allclose(dropout_backward(g, mask), g * mask.numpy() / (1 - p), rtol=1e-15, atol=0)


def test_backward_finite_differences(backend, rng):
    # With a fixed (seed, offset) the mask is fixed and dropout is linear in x: the
    # directional derivative of <g, dropout(x)> equals <dropout_backward(g), v>.
    x = rng.standard_normal((17, 23))
    g = rng.standard_normal(x.shape)
    v = rng.standard_normal(x.shape)
    _, mask = dropout(x, 0.4, seed=77, offset=9)
    eps = 1e-6

    def objective(z):
        return np.sum(g * dropout(z, 0.4, seed=77, offset=9)[0])

    numeric = (objective(x + eps * v) - objective(x - eps * v)) / (2 * eps)
    analytic = np.sum(dropout_backward(g, mask) * v)
    np.testing.assert_allclose(numeric, analytic, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("n", [16, 64, 1024, 4096, 160_000])
def test_offset_continues_the_stream(n, backend, num_threads, rng):
    # Two calls, the second at the first's next_offset, give the halves of one longer
    # call when the first half is a whole number of Philox blocks (a multiple of 16).
    x = rng.standard_normal(2 * n).astype(np.float32)
    y_whole, m_whole = dropout(x, 0.5, seed=SEED, offset=1000)
    y1, m1 = dropout(x[:n], 0.5, seed=SEED, offset=1000)
    assert m1.next_offset == 1000 + blocks(n)
    y2, m2 = dropout(x[n:], 0.5, seed=SEED, offset=m1.next_offset)
    np.testing.assert_array_equal(np.concatenate([m1.numpy(), m2.numpy()]), m_whole.numpy())
    np.testing.assert_array_equal(np.concatenate([y1, y2]), y_whole)
    assert m2.next_offset == m_whole.next_offset


def test_counter_carries_into_the_second_word(backend):
    x = np.ones(100, np.float64)
    last = 2**64 - blocks(x.size)
    _, mask = dropout(x, 0.5, seed=SEED, offset=last)
    np.testing.assert_array_equal(mask.numpy(), keep_by_hand(x.size, 0.5, SEED, last))
    assert mask.next_offset == 2**64


def test_seeds_differ_and_none_draws_fresh(backend):
    x = np.ones(4096, np.float32)
    a, b = dropout(x, 0.5, seed=1)[1], dropout(x, 0.5, seed=2)[1]
    assert not np.array_equal(a.packed, b.packed)
    c, d = dropout(x, 0.5)[1], dropout(x, 0.5)[1]
    assert c.seed != d.seed and 0 <= c.seed < 2**64
    assert not np.array_equal(c.packed, d.packed)
    # the drawn seed reproduces the mask
    np.testing.assert_array_equal(dropout(x, 0.5, seed=c.seed)[1].packed, c.packed)


def test_high_key_word_matters(backend):
    x = np.ones(256, np.float32)
    a = dropout(x, 0.5, seed=5)[1].packed
    b = dropout(x, 0.5, seed=5 + (1 << 64))[1].packed
    assert not np.array_equal(a, b)


def test_mask_object(backend):
    x = np.ones((3, 37))
    y, mask = dropout(x, 0.25, seed=42, offset=8)
    assert mask.shape == (3, 37) and mask.p == 0.25 and mask.seed == 42 and mask.offset == 8
    assert mask.next_offset == 8 + blocks(111)
    assert mask.nbytes == math.ceil(111 / 8) == mask.packed.nbytes
    keep = mask.numpy()
    assert keep.dtype == np.bool_ and keep.shape == (3, 37)
    np.testing.assert_array_equal(mask.packed, np.packbits(keep.ravel(), bitorder="little"))
    np.testing.assert_array_equal(y != 0, keep)
    assert not mask.packed.flags.writeable
    text = repr(mask)
    assert "DropoutMask" in text and "(3, 37)" in text and "seed=42" in text and "next_offset" in text


@pytest.mark.parametrize("shape", [(0,), (1,), (1000, 33), (8, 9, 10)])
def test_mask_storage_is_one_bit_per_element(shape, backend):
    _, mask = dropout(np.ones(shape, np.float32), 0.5, seed=1)
    size = math.prod(shape)
    assert mask.nbytes <= math.ceil(size / 8) + 8


def test_zero_size(backend):
    x = np.ones((0, 5), np.float32)
    y, mask = dropout(x, 0.5, seed=1, offset=2**64)  # no blocks are used: the last offset is valid
    assert y.shape == (0, 5) and y.dtype == np.float32 and mask.next_offset == 2**64
    assert dropout_backward(np.ones((0, 5), np.float32), mask).shape == (0, 5)
    assert mask.numpy().shape == (0, 5)


# ---------------------------------------------------------------- out=, read-only, inputs

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_out_and_in_place(dtype, backend, rng):
    x = rng.standard_normal((31, 17)).astype(dtype)
    expected, _ = ref.dropout(x, 0.5, seed=4)
    out = np.empty_like(x)
    y, _ = dropout(x, 0.5, seed=4, out=out)
    assert y is out
    np.testing.assert_array_equal(out, expected)
    inplace = x.copy()
    y, mask = dropout(inplace, 0.5, seed=4, out=inplace)
    assert y is inplace
    np.testing.assert_array_equal(inplace, expected)
    fortran_out = np.empty(x.shape, dtype, order="F")
    dropout(x, 0.5, seed=4, out=fortran_out)
    np.testing.assert_array_equal(fortran_out, expected)
    g = rng.standard_normal(x.shape).astype(dtype)
    g_expected = ref.dropout_backward(g, mask)
    r = dropout_backward(g, mask, out=g)
    assert r is g
    np.testing.assert_array_equal(g, g_expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_does_not_depend_on_where_the_output_lies(dtype, backend, rng):
    """dropout_backward runs from the end down when out= starts 1-511 bytes after the
    gradient modulo 4 KiB (fn_trails, fn_stream.h): the same values either way."""
    n, itemsize = 1135, np.dtype(dtype).itemsize
    pages = Pages(8)
    g = pages.at(0, n, dtype)
    g[:] = rng.standard_normal(n)
    _, mask = dropout(g, 0.5, seed=7)
    expected = ref.dropout_backward(g, mask)
    for d in (itemsize, 48, 256, 512 - itemsize, 512, 1024):
        for place in (4 * 4096 + d, 4 * 4096 - d):
            out = pages.at(place, n, dtype)
            out[:] = np.nan
            assert pages.write_into(out, lambda: dropout_backward(g, mask, out=out)) is out
            assert out.tobytes() == expected.tobytes(), f"out at g + {place}"


@pytest.mark.skipif(not _config.compiled_available() or NUMPY_ONLY, reason="compiled kernels only")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_forward_and_backward_match_oracle(dtype, rng):
    """Large forwards and backwards write their result with streaming stores (from
    stream_min_bytes() of traffic); forced from 0 bytes here, with the buffer cache taking any
    size: into out= at several offsets from a cache line (a lead, whole chunks and a tail in
    every tile; for the backward every place of the first streamed element's bit in its mask
    byte), into a strided out= (through a cached block), in place, and allocating twice (the
    second call reuses a cached block, which streams), on every variant and 1 and 2 threads.
    float16 computes in a float32 intermediate from np.empty, which is not streamed; its
    values are checked."""
    n = 600_001 if dtype == np.float32 else 300_001    # results of 2.3-2.4 MB: cached blocks
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty((n + 64) * itemsize + 64, np.uint8)
    lead = (-raw.ctypes.data) % 64                      # a known placement: line-aligned base
    out = raw[lead:lead + (n + 32) * itemsize].view(dtype)
    base = rng.standard_normal(n + 16).astype(dtype)
    pool = _config._pool
    try:
        _config.set_stream_min_bytes(0)
        pool.set_min_bytes(0)
        for isa in _config._runnable_isas():
            with variant("cython", isa):
                for threads in (1, 2):
                    fastnorm.set_num_threads(threads)
                    for shift in (0, 3, 8):
                        x = base[shift:shift + n]
                        expected, expected_mask = ref.dropout(x, 0.3, seed=7, offset=5)
                        o = out[shift:shift + n]
                        y, mask = dropout(x, 0.3, seed=7, offset=5, out=o)
                        assert y is o
                        np.testing.assert_array_equal(o, expected, err_msg=f"{isa} {threads} {shift}")
                        np.testing.assert_array_equal(mask.packed, expected_mask.packed)
                        for _ in range(2):
                            y, _ = dropout(x, 0.3, seed=7, offset=5)
                            np.testing.assert_array_equal(y, expected)
                        strided = np.empty(2 * n, dtype)[::2]
                        dropout(x, 0.3, seed=7, offset=5, out=strided)
                        np.testing.assert_array_equal(strided, expected)
                        inplace = x.copy()
                        dropout(inplace, 0.3, seed=7, offset=5, out=inplace)
                        np.testing.assert_array_equal(inplace, expected)
                    _, mask = dropout(base[:n], 0.3, seed=7, offset=5)
                    for shift in range(8):   # gx's first line starts at element (8 - shift) % 8 mod 8
                        g = base[16 - shift:16 - shift + n]
                        expected = ref.dropout_backward(g, mask)
                        o = out[shift:shift + n]
                        out[:] = np.inf      # and nothing written outside o
                        assert dropout_backward(g, mask, out=o) is o
                        np.testing.assert_array_equal(o, expected, err_msg=f"{isa} {threads} {shift}")
                        assert np.isinf(out[:shift]).all() and np.isinf(out[shift + n:]).all()
                        for _ in range(2):
                            np.testing.assert_array_equal(dropout_backward(g, mask), expected)
                        strided = np.empty(2 * n, dtype)[::2]
                        dropout_backward(g, mask, out=strided)
                        np.testing.assert_array_equal(strided, expected)
                        inplace = g.copy()
                        dropout_backward(inplace, mask, out=inplace)
                        np.testing.assert_array_equal(inplace, expected)
                    half = base[:n].astype(np.float16)
                    y, half_mask = dropout(half, 0.3, seed=7, offset=5)
                    np.testing.assert_array_equal(y, ref.dropout(half, 0.3, seed=7, offset=5)[0])
                    np.testing.assert_array_equal(dropout_backward(half, half_mask),
                                                  ref.dropout_backward(half, half_mask))
    finally:
        _config.set_stream_min_bytes(None)
        pool.set_min_bytes(pool.MIN_BYTES)
        fastnorm.set_num_threads(None)


@pytest.mark.skipif(not _config.compiled_available() or NUMPY_ONLY or "avx2" not in _config._runnable_isas(),
                    reason="the compiled AVX2 variant only")
@pytest.mark.parametrize("split", [False, True])
def test_both_avx2_philox_groups_give_the_oracle_stream(split, rng):
    """The AVX2 variant generates Philox blocks by one of two groups of eight (fn_philox.h):
    two vectors of four blocks, or one vector and four scalar blocks, its choice where 256-bit
    instructions run as two halves (AMD Zen 1).  Either must give NumPy's stream on any CPU:
    lengths around a group (128 elements) and a tile (1024), chunks split over two threads,
    the counter carrying into its second word at the last block (only the last block can:
    offsets stop at 2**64 - blocks), which n = 80, 96, 112 and 128 put at each scalar block
    of a group, streamed stores (every call here, into out=), both dtypes.  Beside it the
    streamed backward of the same lengths (none to a few whole lines between its head and
    tail), and nothing written outside its out=."""
    ext = _config.compiled_module("dropout")
    default = ext.split_group()
    pool = _config._pool
    try:
        try:
            ext.set_split_group(split)
        except ValueError as exc:   # the split group on an AVX2 CPU without BMI2
            pytest.skip(str(exc))
        assert ext.split_group() is split
        _config.set_stream_min_bytes(0)
        pool.set_min_bytes(0)
        with variant("cython", "avx2"):
            for threads in (1, 2):
                fastnorm.set_num_threads(threads)
                for n in (1, 15, 16, 80, 96, 112, 127, 128, 129, 1023, 1024, 1025, 300_001):
                    for offset in (0, 3, 2**64 - blocks(n)):
                        for dtype in (np.float32, np.float64):
                            x = rng.standard_normal(n).astype(dtype)
                            out = np.empty_like(x)
                            y, mask = dropout(x, 0.3, seed=SEED, offset=offset, out=out)
                            y_ref, mask_ref = ref.dropout(x, 0.3, seed=SEED, offset=offset)
                            where = f"split={split} threads={threads} n={n} offset={offset} {dtype.__name__}"
                            np.testing.assert_array_equal(mask.packed, mask_ref.packed, err_msg=where)
                            np.testing.assert_array_equal(y, y_ref, err_msg=where)
                            # the streamed backward of a few lines, at two places in a line
                            for lead in (3, 8):
                                buf = np.full(n + 32, np.inf, dtype)
                                gx = buf[lead:lead + n]
                                assert dropout_backward(x, mask, out=gx) is gx
                                np.testing.assert_array_equal(gx, ref.dropout_backward(x, mask_ref),
                                                              err_msg=where)
                                assert np.isinf(buf[:lead]).all() and np.isinf(buf[lead + n:]).all()
    finally:
        ext.set_split_group(None)
        _config.set_stream_min_bytes(None)
        pool.set_min_bytes(pool.MIN_BYTES)
        fastnorm.set_num_threads(None)
    assert ext.split_group() is default


def test_read_only_input_and_inputs_not_modified(backend, rng):
    x = rng.standard_normal((50, 40)).astype(np.float32)
    g = rng.standard_normal((50, 40)).astype(np.float32)
    x_copy, g_copy = x.copy(), g.copy()
    x.flags.writeable = False
    g.flags.writeable = False
    y, mask = dropout(x, 0.3, seed=8)
    gx = dropout_backward(g, mask)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(g, g_copy)
    np.testing.assert_array_equal(y, ref.dropout(x_copy, 0.3, seed=8)[0])
    np.testing.assert_array_equal(gx, ref.dropout_backward(g_copy, mask))
    packed = mask.packed.copy()
    dropout_backward(g, mask)
    np.testing.assert_array_equal(mask.packed, packed)


def test_lists_are_accepted(backend):
    y, mask = dropout([[1.0, 2.0], [3.0, 4.0]], 0.0, seed=0)
    np.testing.assert_array_equal(y, [[1.0, 2.0], [3.0, 4.0]])


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_p_raises_value_error(p, backend):
    with pytest.raises(ValueError, match=r"dropout: p"):
        dropout(np.ones(4), p)


@pytest.mark.parametrize("p", ["0.5", None, True, 1j])
def test_p_of_wrong_type_raises_type_error(p, backend):
    with pytest.raises(TypeError, match=r"dropout: p"):
        dropout(np.ones(4), p)


@pytest.mark.parametrize("seed, exc", [(-1, ValueError), (2**128, ValueError), (1.5, TypeError),
                                       ("7", TypeError), (True, TypeError)])
def test_bad_seed(seed, exc, backend):
    with pytest.raises(exc, match=r"dropout: seed"):
        dropout(np.ones(4), 0.5, seed=seed)


def test_numpy_integer_seed_and_offset_are_accepted(backend):
    a = dropout(np.ones(64), 0.5, seed=np.uint64(9), offset=np.int32(3))[1]
    b = dropout(np.ones(64), 0.5, seed=9, offset=3)[1]
    np.testing.assert_array_equal(a.packed, b.packed)


@pytest.mark.parametrize("offset, exc", [(-1, ValueError), (2**64 - 1, ValueError), (2**64, ValueError),
                                         (0.0, TypeError), (None, TypeError)])
def test_bad_offset(offset, exc, backend):
    # 40 elements use 3 blocks, so the largest valid offset is 2**64 - 3.
    with pytest.raises(exc, match=r"dropout: offset"):
        dropout(np.ones(40), 0.5, seed=1, offset=offset)
    dropout(np.ones(40), 0.5, seed=1, offset=2**64 - 3)


@pytest.mark.parametrize("bad", [np.arange(4), np.ones(4, np.complex64), np.array(["a"]), None])
def test_wrong_dtype_raises_type_error(bad, backend):
    with pytest.raises(TypeError, match=r"dropout: x"):
        dropout(bad, 0.5)


def test_bad_out(backend):
    x = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"dropout: out"):
        dropout(x, 0.5, out=np.empty((5, 4), np.float32))
    with pytest.raises(TypeError, match=r"dropout: out"):
        dropout(x, 0.5, out=np.empty((4, 5), np.float64))
    read_only = np.empty((4, 5), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"dropout: out"):
        dropout(x, 0.5, out=read_only)
    with pytest.raises(TypeError, match=r"dropout: out"):
        dropout(x, 0.5, out=[0.0] * 20)


def test_backward_errors(backend):
    _, mask = dropout(np.ones((4, 5), np.float32), 0.5, seed=1)
    with pytest.raises(ValueError, match=r"dropout_backward: grad_output"):
        dropout_backward(np.ones((5, 4), np.float32), mask)
    with pytest.raises(TypeError, match=r"dropout_backward: mask"):
        dropout_backward(np.ones((4, 5), np.float32), mask.numpy())
    with pytest.raises(TypeError, match=r"dropout_backward: grad_output"):
        dropout_backward(np.ones((4, 5), np.int32), mask)
    with pytest.raises(ValueError, match=r"dropout_backward: out"):
        dropout_backward(np.ones((4, 5), np.float32), mask, out=np.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match=r"dropout_backward: out"):
        dropout_backward(np.ones((4, 5), np.float32), mask, out=np.empty((4, 5), np.float16))


# ---------------------------------------------------------------- PyTorch (optional)

def test_semantics_match_pytorch_given_the_mask(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((64, 64)).astype(np.float32)
    g = rng.standard_normal((64, 64)).astype(np.float32)
    y, mask = dropout(x, 0.3, seed=5)
    keep = torch.from_numpy(mask.numpy())
    tx = torch.from_numpy(x).requires_grad_()
    # PyTorch's dropout with this mask: x * mask / (1 - p)
    ty = tx * keep / (1 - 0.3)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(dropout_backward(g, mask), tx.grad.numpy(), rtol=1e-6, atol=0)
    tz = torch.nn.functional.dropout(torch.ones(1000), p=1.0, training=True)
    assert float(tz.abs().sum()) == 0.0


# ---------------------------------------------------------------- the C-level fast path

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", ["new", "out", "in place"])
def test_fast_path_is_taken_and_equals_the_general_path(dtype, where, backend, num_threads,
                                                        monkeypatch, rng):
    """Plain arrays take forward_fast / backward_fast; a strided view of the same values
    takes the general path; results, masks and gradients are the same bits."""
    if backend[0] != "cython":
        pytest.skip("the fast path exists only on the compiled backend")
    calls = count_fast_calls(monkeypatch, _config.compiled_module("dropout"),
                             ("forward_fast", "backward_fast"))
    x = rng.standard_normal((67, 129)).astype(dtype)
    strided = np.empty((67, 258), dtype)[:, ::2]
    strided[...] = x
    g = rng.standard_normal(x.shape).astype(dtype)
    y_general, m_general = dropout(strided, 0.3, seed=SEED, offset=5)
    gx_general = dropout_backward(g[:, ::-1][:, ::-1].copy(order="F"), m_general)
    assert calls == [("forward_fast", False), ("backward_fast", False)]
    calls.clear()
    arg = x.copy()
    out = {"new": None, "out": np.empty_like(x), "in place": arg}[where]
    y, mask = dropout(arg, 0.3, seed=SEED, offset=5, out=out)
    gx = dropout_backward(g, mask, out=None if where == "new" else np.empty_like(g))
    assert calls == [("forward_fast", True), ("backward_fast", True)]
    assert out is None or y is out
    assert y.tobytes() == y_general.tobytes() and gx.tobytes() == gx_general.tobytes()
    np.testing.assert_array_equal(mask.packed, m_general.packed)
    assert not mask.packed.flags.writeable
    assert (mask.shape, mask.p, mask.seed, mask.offset) == (m_general.shape, 0.3, SEED, 5)


def test_mask_attributes_are_python_numbers(backend):
    """NumPy scalars as arguments give the mask Python ints and floats (the fast path builds
    it without the constructor's conversions)."""
    _, mask = dropout(np.ones((4, 8), np.float32), np.float32(0.25), seed=np.uint64(7),
                      offset=np.int64(3))
    assert type(mask.p) is float and type(mask.seed) is int and type(mask.offset) is int
    assert all(type(d) is int for d in mask.shape) and mask.shape == (4, 8)


@pytest.mark.parametrize("p", [0.0, -0.0, 1.0, 2.0 ** -17, 1 - 2.0 ** -17])
def test_extreme_arguments_match_the_oracle(p, backend):
    """p at and next to its ends, the largest seed, and the last offset a call may start at."""
    x = np.linspace(-3, 3, 1000, dtype=np.float32).reshape(10, 100)
    for seed, offset in ((2**128 - 1, 0), (SEED, 2**64 - blocks(x.size))):
        y, mask = dropout(x, p, seed=seed, offset=offset)
        y_ref, m_ref = ref.dropout(x, p, seed=seed, offset=offset)
        assert y.tobytes() == y_ref.tobytes()
        np.testing.assert_array_equal(mask.packed, m_ref.packed)
        assert mask.next_offset == offset + blocks(x.size)
    with pytest.raises(ValueError, match="offset"):
        dropout(x, p, seed=1, offset=2**64 - blocks(x.size) + 1)


def test_mask_pickles_read_only(backend):
    import pickle
    x = np.arange(100, dtype=np.float64)
    g = np.ones_like(x)
    _, mask = dropout(x, 0.5, seed=9)
    copy = pickle.loads(pickle.dumps(mask))
    assert not copy.packed.flags.writeable
    np.testing.assert_array_equal(copy.packed, mask.packed)
    assert dropout_backward(g, copy).tobytes() == dropout_backward(g, mask).tobytes()


def test_backward_with_a_hand_built_mask_of_strided_bits(backend):
    """A DropoutMask built from a non-contiguous uint8 array (the constructor copies it)."""
    x = np.arange(1, 65, dtype=np.float32)
    _, mask = dropout(x, 0.5, seed=3)
    spread = np.zeros(2 * mask.packed.size, np.uint8)
    spread[::2] = mask.packed
    built = DropoutMask(x.shape, 0.5, 3, 0, spread[::2])
    assert built.packed.flags.c_contiguous and not built.packed.flags.writeable
    assert dropout_backward(x, built).tobytes() == dropout_backward(x, mask).tobytes()


def test_mask_bits_are_read_only_on_every_path(backend, rng):
    """Plain arrays (the fast path), float16, strided and Fortran-order inputs (the general
    path) and empty ones all hand back read-only bits."""
    x = rng.standard_normal((40, 33)).astype(np.float32)
    for arg in (x, x.astype(np.float16), x[:, ::2], np.asfortranarray(x), x[:0]):
        _, mask = dropout(arg, 0.5, seed=2)
        assert not mask.packed.flags.writeable, (arg.dtype, arg.strides)
