"""The cache of large result buffers (fastnorm/_ext/_pool.pyx, fn_pool.h): results come out
right and the same bits with it on or off, the arrays are ordinary NumPy arrays (own their
data, resize, pickle, tracemalloc sees them), freed buffers are reused, and the cache
keeps to its limit.  The size from which results use the cache is lowered here so that
small arrays exercise it."""
import pickle
import threading
import tracemalloc

import numpy as np
import pytest

import fastnorm
from fastnorm import _config

from _placement import misaligned_copy

pytestmark = pytest.mark.skipif(not _config.compiled_available() or not _config._pool.AVAILABLE,
                                reason="the buffer cache exists in compiled builds (not on Windows)")

MIB = 1 << 20


def block(nbytes):
    """The cached block that serves nbytes: a 64-byte header and up to a page of lead
    (fn_pool.h) on top, in whole 64 KiB units below 8 MiB, whole 2 MiB granules from there."""
    need = nbytes + 4096 + 64
    unit = 64 * 1024 if need < 8 * MIB else 2 * MIB
    return -(-need // unit) * unit


@pytest.fixture
def small_pool():
    """Results of 1 MiB and more go through a 16 MiB cache, emptied before and after."""
    pool = _config._pool
    _config.set_pool_bytes(0)
    _config.set_pool_bytes(16 * MIB)
    pool.set_min_bytes(MIB)
    try:
        yield pool
    finally:
        pool.set_min_bytes(pool.MIN_BYTES)
        _config.set_pool_bytes(None)


def test_freed_results_are_reused(small_pool):
    x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)  # 2 MiB
    before = small_pool.stats()
    y = fastnorm.relu(x)
    address = y.ctypes.data
    del y
    assert small_pool.stats()["cached"] == block(x.nbytes)
    y = fastnorm.relu(x)
    stats = small_pool.stats()
    assert y.ctypes.data == address
    assert stats["hits"] == before["hits"] + 1 and stats["cached"] == 0
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert y.flags.owndata and y.flags.writeable


def test_where_results_sit_within_a_page(small_pool):
    """Results at x's offset within a page, except the single-input elementwise forwards
    (activations, dropout), a quarter page on (activations.pyx)."""
    raw = np.zeros(512 * 1024 + 1024, np.float32)
    for shift in (0, 1, 4, 15, 16, 500, 1023):
        x = raw[shift:shift + 512 * 1024].reshape(512, 1024)
        for name, y, distance in (
                ("relu", fastnorm.relu(x), 1024), ("dropout", fastnorm.dropout(x, 0.5, seed=1)[0], 1024),
                ("gelu_backward", fastnorm.gelu_backward(x, x), 0),
                ("layer_norm", fastnorm.layer_norm(x, 1024)[0], 0),
                ("batch_norm_backward", fastnorm.batch_norm_backward(
                    x, x, None, np.zeros(1024, np.float32), np.ones(1024, np.float32))[0], 0)):
            assert (y.ctypes.data - x.ctypes.data) % 4096 == distance, (name, shift)


@pytest.mark.parametrize("call", ["batch_norm", "group_norm_channels_last"])
@pytest.mark.parametrize("shape, dtype", [((128, 2048), np.float32), ((64, 4096), np.float32),
                                          ((128, 1024), np.float64), ((176, 1536), np.float32)],
                         ids=str)
def test_gradients_of_whole_page_rows_sit_apart_from_their_inputs(small_pool, call, shape, dtype):
    """Channels-last gradient passes visit four rows at a time in dy, x and gx; rows a whole
    number of 4 KiB pages long put all twelve lines of a visit in one L1 set when the three
    arrays share an offset within a page, so the cache places such a gx at least the alias
    window (256 bytes) from both inputs' offsets, either way: a quarter page from x's, or
    three quarters where dy is near a quarter (normalization.pyx, _whole_page_rows; dy 16
    bytes after x's offset, after a quarter page and after three quarters).  The same bits
    wherever gx lies; rows of one page (test_where_results_sit_within_a_page)
    and rows over a page that are not whole pages ((176, 1536) float32: 6 KiB) stay at x's
    offset."""
    from fastnorm._ext import normalization as ext
    rng = np.random.default_rng(3)
    n = int(np.prod(shape))
    nbytes = n * np.dtype(dtype).itemsize
    whole_pages = shape[-1] * np.dtype(dtype).itemsize % 4096 == 0
    raw = np.zeros(2 * nbytes + 4 * 4096, np.uint8)
    for shift in (0, 16, 1008, 3072):
        for dy_after in (16, 1024 + 16, 3072 + 16):
            x = np.frombuffer(raw.data, dtype, n, shift).reshape(shape)
            g_start = shift + (nbytes + 4095) // 4096 * 4096 + dy_after
            g = np.frombuffer(raw.data, dtype, n, g_start).reshape(shape)
            x[...] = rng.standard_normal(shape)
            g[...] = rng.standard_normal(shape)
            c = shape[-1]
            w = rng.standard_normal(c).astype(dtype)
            if call == "batch_norm":
                _, mean, rstd = fastnorm.batch_norm(x, w)
                run = lambda: fastnorm.batch_norm_backward(g, x, w, mean, rstd)[0]
            else:
                x4, g4 = x.reshape(2, 2, -1, c), g.reshape(2, 2, -1, c)
                _, mean, rstd = fastnorm.group_norm(x4, 4, w, channels_last=True)
                run = lambda: fastnorm.group_norm_backward(g4, x4, 4, w, mean, rstd,
                                                           channels_last=True)[0]
            gx = run()
            where = (shift, dy_after)
            if whole_pages:
                for source in (x, g):
                    distance = (gx.ctypes.data - source.ctypes.data) % 4096
                    assert 256 <= distance <= 4096 - 256, (where, distance)
            else:
                assert gx.ctypes.data % 4096 == x.ctypes.data % 4096, where
            previous = ext._set_rows_apart(False)
            try:
                at_offset = run()
            finally:
                ext._set_rows_apart(previous)
            assert at_offset.ctypes.data % 4096 == x.ctypes.data % 4096, where
            assert gx.tobytes() == at_offset.tobytes(), where


def test_a_misaligned_input_still_gets_an_aligned_result(small_pool):
    for dtype, offset in ((np.float64, 4), (np.float64, 1), (np.float32, 2)):
        x = misaligned_copy(np.zeros((4 << 20) // np.dtype(dtype).itemsize - 16, dtype), offset)
        for y in (fastnorm.relu(x), fastnorm.relu_backward(x, x)):
            assert y.flags.aligned and y.ctypes.data % np.dtype(dtype).itemsize == 0, (dtype, offset)


def test_results_are_the_same_bits_with_and_without_the_cache(small_pool, rng):
    x = (rng.standard_normal((256, 4099)) * 3).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(4099).astype(np.float32), rng.standard_normal(4099).astype(np.float32)

    def run():
        y, mean, rstd = fastnorm.layer_norm(x, 4099, w, b)
        gx, gw, gb = fastnorm.layer_norm_backward(g, x, 4099, w, mean, rstd, bias=b)
        return [fastnorm.gelu(x), fastnorm.silu_backward(g, x), fastnorm.dropout(x, 0.3, seed=5)[0],
                fastnorm.relu(x[:, ::2]), y, gx, gw, gb]

    with_cache = run()
    small_pool.set_min_bytes(1 << 62)
    without = run()
    for a, b_ in zip(with_cache, without):
        assert a.tobytes() == b_.tobytes()


def test_cached_arrays_behave_as_numpy_arrays(small_pool):
    y = fastnorm.sigmoid(np.zeros((1024, 1024), np.float64))  # 8 MiB
    assert y.flags.owndata and y.base is None
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(y)), y)
    y.resize((2048, 1024), refcheck=False)  # realloc through the handler
    assert y.shape == (2048, 1024) and np.all(y[:1024] == 0.5)
    y.resize((10,), refcheck=False)
    assert np.all(y == 0.5)
    del y


def test_tracemalloc_sees_cached_arrays(small_pool):
    x = np.ones((512, 1024), np.float32)
    y = fastnorm.relu(x)
    del y  # now cached: the next result reuses it
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y = fastnorm.relu(x)
        assert tracemalloc.get_traced_memory()[0] - base >= x.nbytes
        del y
        assert tracemalloc.get_traced_memory()[0] - base < 64 * 1024
    finally:
        tracemalloc.stop()


def test_the_cache_keeps_to_its_limit(small_pool):
    arrays = [fastnorm.relu(np.ones((2048, 1024), np.float32)) for _ in range(6)]  # 8 MiB each
    del arrays
    assert block(8 * MIB) == 10 * MIB
    assert small_pool.stats()["cached"] == 10 * MIB  # one of six kept: 16 MiB holds one block
    big = fastnorm.relu(np.ones((5 * 1024, 1024), np.float32))  # 20 MiB: above the limit
    del big
    assert small_pool.stats()["cached"] == 10 * MIB
    arrays = [fastnorm.relu(np.ones((1024, 1024), np.float32)) for _ in range(3)]  # 4 MiB each
    del arrays
    assert block(4 * MIB) == 4 * MIB + 64 * 1024
    assert small_pool.stats()["cached"] == 3 * block(4 * MIB)  # the 10 MiB block made room
    _config.set_pool_bytes(9 * MIB)
    assert small_pool.stats()["cached"] == 2 * block(4 * MIB)
    _config.set_pool_bytes(0)
    assert small_pool.stats()["cached"] == 0
    y = fastnorm.relu(np.ones((1024, 1024), np.float32))
    del y
    assert small_pool.stats()["cached"] == 0


def test_sizes_share_blocks_by_whole_granules(small_pool):
    y = fastnorm.relu(np.ones(2 * 1024 * 1024 + 7, np.float32))  # 8 MiB + 28 bytes: 5 granules
    address = y.ctypes.data
    del y
    assert small_pool.stats()["cached"] == 10 * MIB
    y = fastnorm.relu(np.ones(2 * 1024 * 1024 + 400_000, np.float32))
    # the same block (fn_pool.h: it starts at the page holding data - 64), at this input's offset
    assert (y.ctypes.data - 64) // 4096 == (address - 64) // 4096
    del y


def test_blocks_below_8_mib_are_cached_in_64_kib_units(small_pool):
    """Results of 1-8 MiB (the default threshold is 1 MiB) are kept too: in a loop that frees
    a few such buffers per step, glibc's malloc trims its heap and faults them in again
    (_pool.pyx).  A 2 MiB result takes 2 MiB and 64 KiB (whole granules would be 4 MiB)."""
    assert block(2 * MIB) == 2 * MIB + 64 * 1024
    assert small_pool.MIN_BYTES == MIB
    x = np.ones((384, 1024), np.float32)  # 1.5 MiB
    y = fastnorm.silu(x)
    address = y.ctypes.data
    del y
    assert small_pool.stats()["cached"] == block(x.nbytes) == 25 * 64 * 1024
    y = fastnorm.layer_norm(np.ones((383, 1024), np.float32), 1024)[0]  # 4 KiB less: the same block
    assert (y.ctypes.data - 64) // 4096 == (address - 64) // 4096
    assert small_pool.stats()["cached"] == 0
    del y
    z = fastnorm.relu(np.ones((400, 1024), np.float32))  # 64 KiB more: another block
    assert small_pool.stats()["cached"] == block(x.nbytes)
    np.testing.assert_array_equal(z, 1.0)


def test_a_full_set_of_slots_gives_way_to_the_newest_block(small_pool):
    """With every slot holding a block and the limit not reached, a freed block replaces the
    oldest (it used to be dropped itself, and the cache went stale)."""
    _config.set_pool_bytes(512 * MIB)
    kept = [fastnorm.relu(np.ones((256 + 2 * i, 1024), np.float32)) for i in range(140)]
    for i in range(140):  # 140 sizes of 1-2.1 MiB, freed in this order: more than the 128 slots
        kept[i] = None
    stats = small_pool.stats()
    sizes = [block((256 + 2 * i) * 4096) for i in range(140)]
    assert stats["cached"] == sum(sizes[12:])  # the 12 freed first gave way
    newest = fastnorm.relu(np.ones((256 + 2 * 139, 1024), np.float32))  # freed last: cached
    assert small_pool.stats()["hits"] == stats["hits"] + 1
    del newest
    oldest = fastnorm.relu(np.ones((256 + 2 * 0, 1024), np.float32))  # freed first: gone
    assert small_pool.stats()["hits"] == stats["hits"] + 1
    del oldest
    x = np.ones((600, 1024), np.float32)  # a size not cached
    assert block(x.nbytes) not in sizes
    for _ in range(3):
        y = fastnorm.relu(x)
        del y
    assert small_pool.stats()["hits"] == stats["hits"] + 3  # reused from the second call on


def test_frees_from_many_threads(small_pool):
    arrays = [fastnorm.relu(np.ones((512, 1024), np.float32)) for _ in range(32)]
    done = []

    def drop(chunk):
        for _ in range(len(chunk)):
            chunk.pop()
        done.append(True)

    threads = [threading.Thread(target=drop, args=(arrays[i::4],)) for i in range(4)]
    del arrays
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 4 and small_pool.stats()["cached"] <= 16 * MIB
    y = fastnorm.relu(np.full((512, 1024), -1.0, np.float32))
    assert not y.any()


def test_pool_setting_validation():
    with pytest.raises(ValueError, match="set_pool_bytes: n must be >= 0, got -5"):
        _config.set_pool_bytes(-5)
    with pytest.raises(TypeError, match="set_pool_bytes: n must be an int or None, got str"):
        _config.set_pool_bytes("1")
    _config.set_pool_bytes(np.int64(3 << 20))  # NumPy integers are integers
    assert _config.pool_bytes() == 3 << 20
    _config.set_pool_bytes(None)
    assert _config.pool_bytes() == _config.POOL_BYTES


def _handler_name(array):
    try:
        from numpy._core.multiarray import get_handler_name
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import get_handler_name
    return get_handler_name(array)


def _input_just_before(raw, address, distance, count, dtype=np.float32):
    """A view of count items of raw (a uint8 buffer) starting `distance` bytes before
    `address` modulo 4 KiB."""
    start = (address - distance - raw.ctypes.data) % 4096
    return np.frombuffer(raw.data, dtype, count, start)


@pytest.mark.parametrize("case", ["forward", "backward_first", "backward_second", "general"])
def test_results_below_the_cache_are_mallocs_blocks(case):
    """A result below the cache's size is the block NumPy's malloc gave, even where that
    starts 16 bytes after an input modulo 4 KiB (_pool.pyx's _ALIAS_WINDOW): allocating it
    again through the handler (2026-12-02 to 12-03) made glibc hand out fresh pages call
    after call in loops that keep their last results (129-189 page faults per call for a
    1 MiB result, _pool.pyx).  The cache's results are placed
    (test_where_results_sit_within_a_page)."""
    count = 64 * 1024  # 256 KiB: below the cache's threshold
    raw = np.empty(3 * count * 4 + 8192, np.uint8)
    other = _input_just_before(raw[count * 4 + 4096:], 0, 0, count)  # page-aligned, apart from x
    other[...] = np.linspace(-4, 4, count, dtype=np.float32)

    def call(module, x):
        if case == "forward":
            return module.elu(x)
        if case == "backward_first":
            return module.elu_backward(x, other)
        if case == "backward_second":
            return module.elu_backward(other, x)
        return module.elu(x.reshape(256, 256).T)  # Fortran order: the general path

    probe = call(fastnorm, other)
    address = probe.ctypes.data  # where malloc puts a result of this size now
    del probe
    x = _input_just_before(raw, address, 16, count)
    np.copyto(x, other[::-1])  # no temporary: malloc's next block stays where it was
    y = call(fastnorm, x)
    assert _handler_name(y) == "default_allocator", case
    assert y.flags.owndata and y.base is None
    np.testing.assert_allclose(y, call(fastnorm.reference, x), rtol=1e-6, atol=1e-7)
    if not 0 < (y.ctypes.data - x.ctypes.data) % 4096 < 256:
        pytest.skip("malloc did not put the result just after the input here")
