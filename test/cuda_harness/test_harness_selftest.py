"""The CUDA-on-CPU harness reproduces the CUDA semantics the kernels rely on (blocks, shared memory,
__syncthreads with early exit, atomics, warp shuffles, saturating conversions)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from . import HarnessBuildError, build, ptr

pytestmark = pytest.mark.needs_tool("cxx")

SELFTEST_CU = Path(__file__).with_name("selftest.cu")
P = ctypes.c_void_p
WRAPPER = r"""
extern "C" int run_block_scan(const int* in, int* out, int n, int block) {
    launch(block_scan, dim3((n + block - 1) / block), dim3(block), in, out, n);
    return 0;
}
extern "C" int run_atomics(const int* in, int n, int* hist, unsigned long long* total, float* fsum, int* mx,
                           int* mn, unsigned int* bits, int* first) {
    launch(atomics, dim3((n + 63) / 64), dim3(64), in, n, hist, total, fsum, mx, mn, bits, first);
    return 0;
}
extern "C" int run_warp_ops(const int* in, int n, int* sum, int* lane0, unsigned int* ballot, int* down,
                            int* sync_count) {
    launch(warp_ops, dim3(n / 64), dim3(64), in, sum, lane0, ballot, down, sync_count);
    return 0;
}
extern "C" int run_chained(const int* in, int n, int* ticket, int* prefix, int* ready, int* out) {
    launch(chained_block_sums, dim3((n + 63) / 64), dim3(64), in, n, ticket, prefix, ready, out);
    return 0;
}
extern "C" int run_intrinsics(const float* f, int n, int* rz, int* pc, int* ffs) {
    launch(intrinsics, dim3((n + 31) / 32), dim3(32), f, n, rz, pc, ffs);
    return 0;
}
"""


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    lib = build(SELFTEST_CU, WRAPPER)
    lib.run_block_scan.argtypes = [P, P, ctypes.c_int, ctypes.c_int]
    lib.run_atomics.argtypes = [P, ctypes.c_int, P, P, P, P, P, P, P]
    lib.run_warp_ops.argtypes = [P, ctypes.c_int, P, P, P, P, P]
    lib.run_intrinsics.argtypes = [P, ctypes.c_int, P, P, P]
    lib.run_chained.argtypes = [P, ctypes.c_int, P, P, P, P]
    return lib


def test_shared_memory_scan_is_per_block_and_survives_early_exit(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(0)
    n, block = 1000, 128  # last block is partial: threads past n return after the barriers
    x = rng.integers(-5, 10, n).astype(np.int32)
    out = np.zeros(n, np.int32)
    lib.run_block_scan(ptr(x), ptr(out), n, block)
    expected = np.concatenate([np.cumsum(x[s:s + block]) for s in range(0, n, block)])
    np.testing.assert_array_equal(out, expected)


def test_atomics_match_sequential_results(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(1)
    n = 777
    x = rng.integers(0, 10_000, n).astype(np.int32)
    hist = np.zeros(8, np.int32)
    total = np.zeros(1, np.uint64)
    fsum = np.zeros(1, np.float32)
    mx = np.array([-1], np.int32)
    mn = np.array([1 << 30], np.int32)
    bits = np.zeros(1, np.uint32)
    first = np.array([-1], np.int32)
    lib.run_atomics(ptr(x), n, ptr(hist), ptr(total), ptr(fsum), ptr(mx), ptr(mn), ptr(bits), ptr(first))
    np.testing.assert_array_equal(hist, np.bincount(x & 7, minlength=8))
    assert total[0] == x.astype(np.uint64).sum()
    assert fsum[0] == n
    assert mx[0] == x.max() and mn[0] == x.min()
    assert bits[0] == np.bitwise_or.reduce(np.left_shift(np.uint32(1), (x & 31).astype(np.uint32)))
    assert 0 <= first[0] < n


def test_warp_shuffles_ballot_and_syncthreads_count(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(2)
    n = 128
    x = rng.integers(-50, 50, n).astype(np.int32)
    outs = [np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, np.uint32), np.zeros(n, np.int32),
            np.zeros(n, np.int32)]
    lib.run_warp_ops(ptr(x), n, *(ptr(o) for o in outs))
    warps = x.reshape(-1, 32)
    np.testing.assert_array_equal(outs[0], np.repeat(warps.sum(1), 32))
    np.testing.assert_array_equal(outs[1], np.repeat(warps[:, 0], 32))
    ballots = [sum(1 << k for k in range(32) if w[k] & 1) for w in warps]
    np.testing.assert_array_equal(outs[2], np.repeat(np.array(ballots, np.uint32), 32))
    shifted = np.concatenate([np.append(w[1:], w[-1]) for w in warps])
    np.testing.assert_array_equal(outs[3], shifted)
    np.testing.assert_array_equal(outs[4], np.repeat((x.reshape(-1, 64) > 0).sum(1), 64))


def test_blocks_may_wait_for_earlier_blocks_in_a_chained_scan(lib: ctypes.CDLL) -> None:
    n = 1000
    x = np.random.default_rng(3).integers(-9, 10, n).astype(np.int32)
    nb = (n + 63) // 64
    ticket, prefix, ready, out = np.zeros(1, np.int32), *(np.zeros(nb, np.int32) for _ in range(3))
    lib.run_chained(ptr(x), n, ptr(ticket), ptr(prefix), ptr(ready), ptr(out))
    np.testing.assert_array_equal(out, np.cumsum(np.add.reduceat(x, np.arange(0, n, 64))))


def test_float_to_int_conversion_saturates_and_maps_nan_to_zero(lib: ctypes.CDLL) -> None:
    f = np.array([0.0, -0.0, 0.99, -0.99, 1.5, -1.5, 3e9, -3e9, np.inf, -np.inf, np.nan, 2**24], np.float32)
    rz, pc, ffs = (np.zeros(f.size, np.int32) for _ in range(3))
    lib.run_intrinsics(ptr(f), f.size, ptr(rz), ptr(pc), ptr(ffs))
    assert rz.tolist() == [0, 0, 0, 0, 1, -1, 2**31 - 1, -(2**31), 2**31 - 1, -(2**31), 0, 2**24]
    bits = f.view(np.uint32).astype(np.uint64) << np.uint64(7)
    assert pc.tolist() == [bin(int(b)).count("1") for b in bits]
    assert ffs.tolist() == [(int(b) & -int(b)).bit_length() for b in bits]


def test_build_reports_compiler_errors_with_the_wrapper_line(tmp_path: Path) -> None:
    cu = tmp_path / "broken.cu"
    cu.write_text('extern "C" __global__ void k(int* p) { p[threadIdx.x] = 1; }\n')
    with pytest.raises(HarnessBuildError, match=r"(?s)<wrapper>:2.*undeclared_name"):
        build(cu, '\nextern "C" int f() { return undeclared_name; }\n')
