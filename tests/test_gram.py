"""The compiled Gram kernel against numpy's ``zᵀz`` of the same shifted rows."""

import sys

import numpy as np
import pytest

from mpitrain.stats import StatisticsAccumulator
from mpitrain.stats._gram import KERNEL_MIN_WORK, MAX_KERNEL_COLUMNS, GramKernel
from mpitrain.stats._gram_kernels import vector_width

pytestmark = pytest.mark.minversions


def _reference(x, y, shift, w=None):
    z = np.hstack([x.astype(np.float64) - shift[: x.shape[1]], y - shift[x.shape[1] :]])
    z = np.hstack([z, np.ones((len(z), 1))])
    if w is not None:
        z *= np.sqrt(w)[:, None]
    return z.T @ z


@pytest.mark.parametrize("n_features", [1, 2, 3, 6, 50, 101, MAX_KERNEL_COLUMNS - 5])
@pytest.mark.parametrize("n_targets", [0, 1, 3])
def test_every_width_and_padding_equals_numpy(n_features, n_targets):
    rng = np.random.default_rng(n_features * 10 + n_targets)
    # More rows than one cache chunk, and a count no chunk divides.
    n = 5_003
    x = rng.standard_normal((n, n_features)) * 4 + 9
    y = rng.standard_normal((n, n_targets))
    shift = np.concatenate([x[:100].mean(axis=0), y[:100].mean(axis=0)])
    got = GramKernel(n_features + n_targets + 1).gram(x, y, shift)
    want = _reference(x, y, shift)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9 * np.abs(want).max())
    assert np.array_equal(got, got.T)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weights_float32_and_threads_equal_numpy(threads, dtype):
    rng = np.random.default_rng(threads)
    n = 40_000  # enough rows for every thread to take a part
    x = (rng.standard_normal((n, 20)) * 3 - 5).astype(dtype)
    y = rng.standard_normal((n, 1))
    w = rng.random(n) * 2
    shift = np.concatenate([x[:50].mean(axis=0, dtype=np.float64), y[:50].mean(axis=0)])
    got = GramKernel(22, threads=threads).gram(x, y, shift, w)
    want = _reference(x, y, shift, w)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-9 * np.abs(want).max())


def test_no_rows_and_strided_rows():
    rng = np.random.default_rng(0)
    kernel = GramKernel(5)
    assert not kernel.gram(np.empty((0, 4)), np.empty((0, 0)), np.zeros(4)).any()
    x = rng.standard_normal((300, 8))[::2, ::2]  # neither row nor column contiguous
    shift = np.zeros(4)
    np.testing.assert_allclose(
        kernel.gram(x, np.empty((150, 0)), shift),
        _reference(x, np.empty((150, 0)), shift),
        rtol=1e-13,
    )


def test_wider_than_the_kernel_or_mismatched_columns_is_refused():
    with pytest.raises(ValueError, match="at most"):
        GramKernel(MAX_KERNEL_COLUMNS + 1)
    with pytest.raises(ValueError, match="do not make 6 columns"):
        GramKernel(6).gram(np.ones((3, 3)), np.ones((3, 1)), np.zeros(4))


@pytest.mark.parametrize("n_features", [30, MAX_KERNEL_COLUMNS + 10])
def test_accumulator_on_either_path_equals_numpy_on_all_rows(n_features):
    # Large mean beside a small spread: the shift must keep the scatter exact.
    rng = np.random.default_rng(n_features)
    n = 12_000
    x = rng.standard_normal((n, n_features)) * 1e-3 + 1e4
    y = rng.standard_normal((n, 1)) + 50
    w = rng.random(n)
    acc = StatisticsAccumulator(n_features, 1, use_kernel=True)
    for start in range(0, n, 5_000):
        acc.add(
            x[start : start + 5_000], y[start : start + 5_000], w[start : start + 5_000]
        )
    stats = acc.result()
    z = np.hstack([x, y])
    mean = np.average(z, axis=0, weights=w)
    scatter = (z - mean).T @ ((z - mean) * w[:, None])
    assert stats.weight == pytest.approx(w.sum(), rel=1e-13)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-13)
    np.testing.assert_allclose(
        stats.scatter, scatter, rtol=1e-9, atol=1e-9 * np.abs(scatter).max()
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_large_offsets_keep_the_scatter_exact_against_long_double(dtype, weighted):
    # 1e8 + noise (float64) or 1e4 + noise (float32, whose spacing at 1e8 is 8):
    # the kernel's shift and its chunking must not cancel the scatter, compared
    # with a two-pass centred sum in long double on the same rounded rows.
    rng = np.random.default_rng(11 + weighted)
    n, d = 7_001, 50  # rows across many chunks and both thread parts
    offset = 1e8 if dtype == np.float64 else 1e4
    x = (rng.standard_normal((n, d)) + offset).astype(dtype)
    y = rng.standard_normal((n, 1)) * 1e-2 - offset
    w = rng.random(n) + 0.1 if weighted else None
    acc = StatisticsAccumulator(d, 1, use_kernel=True)
    for start in range(0, n, 3_000):
        part = slice(start, start + 3_000)
        acc.add(x[part], y[part], None if w is None else w[part])
    stats = acc.result()
    z = np.hstack([x.astype(np.longdouble), y.astype(np.longdouble)])
    weights = np.ones(n, np.longdouble) if w is None else w.astype(np.longdouble)
    mean = (z * weights[:, None]).sum(axis=0) / weights.sum()
    centred = z - mean
    scatter = (centred * weights[:, None]).T @ centred
    np.testing.assert_allclose(stats.mean, mean.astype(np.float64), rtol=1e-15)
    np.testing.assert_allclose(
        stats.scatter,
        scatter.astype(np.float64),
        rtol=1e-9,
        atol=1e-9 * float(np.abs(scatter).max()),
    )


def test_nan_in_a_row_is_named_by_the_accumulator():
    x = np.ones((9_000, 10))
    x[7_777, 3] = np.nan
    acc = StatisticsAccumulator(10, 1, use_kernel=True)
    with pytest.raises(ValueError, match="the first at row 7877"):
        acc.add(x, np.zeros((9_000, 1)), first_row=100)


@pytest.mark.parametrize("failure", ["no llvmlite", "LLVM fails"])
def test_without_the_kernel_the_accumulator_falls_back_to_blas(monkeypatch, failure):
    # A missing llvmlite, or LLVM unable to compile or load the code, must
    # cost speed, not answers.
    if failure == "no llvmlite":
        monkeypatch.setitem(sys.modules, "mpitrain.stats._gram_kernels", None)
    else:
        from mpitrain.stats import _gram_kernels

        def fail():
            raise RuntimeError("LLVM could not compile or load it: test")

        monkeypatch.setattr(_gram_kernels, "load", fail)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((3_000, 7)) + 2, rng.standard_normal((3_000, 1))
    acc = StatisticsAccumulator(7, 1, use_kernel=True)
    with pytest.warns(RuntimeWarning, match="using BLAS"):
        acc.add(x, y)
    acc.add(x, y)  # warned once
    assert not acc.use_kernel
    z = np.hstack([x, y])
    z = np.vstack([z, z])
    centred = z - z.mean(axis=0)
    np.testing.assert_allclose(acc.result().scatter, centred.T @ centred, rtol=1e-12)


def test_vector_width_follows_the_cpu():
    assert vector_width("+sse2,+avx,+avx2,+fma,+avx512f,-amx-tile") == 8
    assert vector_width("+sse2,+avx,+avx2,+fma,-avx512f") == 4
    assert vector_width("+sse2,-avx") == 2
    assert vector_width("+neon,+fp-armv8") == 2


@pytest.mark.parametrize(
    "cpu, features, width",
    [
        ("haswell", "+sse2,+sse4.2,+avx,+avx2,+fma", 4),
        ("x86-64", "+sse2", 2),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_narrower_vectors_equal_numpy(cpu, features, width, dtype):
    # The CPUs without AVX-512 get 4- or 2-wide code; this machine runs both.
    import platform

    from mpitrain.stats import _gram_kernels

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 code")
    kernels = _gram_kernels.compile_for(cpu, features)
    assert kernels.width == width
    rng = np.random.default_rng(width)
    n, d, t = 1_003, 13, 2  # a last chunk that no vector width divides
    x = (rng.standard_normal((n, d)) * 3 + 7).astype(dtype)
    y = rng.standard_normal((n, t))
    w = rng.random(n) + 0.5
    shift = np.concatenate([x[:20].mean(axis=0, dtype=np.float64), y[:20].mean(axis=0)])
    p = -(-(d + t + 1) // _gram_kernels.TILE) * _gram_kernels.TILE
    for weight in (np.empty(0), w):
        zt, gram = np.zeros((p, 136)), np.zeros((p, p))
        _gram_kernels.shifted_gram(x, y, weight, shift, zt, gram, 128, kernels=kernels)
        upper = np.triu(gram[: d + t + 1, : d + t + 1])
        got = upper + np.triu(upper, 1).T
        want = _reference(x, y, shift, weight if weight.size else None)
        np.testing.assert_allclose(
            got, want, rtol=1e-12, atol=1e-10 * np.abs(want).max()
        )


# A fresh process: the kernel is loaded (or compiled) once per process.
_GRAM_IN_A_PROCESS = """
import numpy as np
from mpitrain.stats._gram import GramKernel
rng = np.random.default_rng(5)
x = rng.standard_normal((2_003, 9)) + 3
shift = x[:10].mean(axis=0)
z = np.hstack([x - shift, np.ones((len(x), 1))])
got = GramKernel(10).gram(x, np.empty((len(x), 0)), shift)
np.testing.assert_allclose(got, z.T @ z, rtol=1e-12)
print("equal")
"""


def _gram_in_a_process(cache):
    import os
    import subprocess

    env = {**os.environ, "MPITRAIN_CACHE_DIR": str(cache)}
    run = subprocess.run(
        [sys.executable, "-c", _GRAM_IN_A_PROCESS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "equal"
    assert "using BLAS" not in run.stderr


def test_the_cached_code_is_checked_and_a_damaged_file_is_replaced(tmp_path):
    cache = tmp_path / "cache"
    _gram_in_a_process(cache)
    (written,) = cache.iterdir()
    assert written.name.startswith("gram-kernel-") and written.suffix == ".o"
    whole = written.read_bytes()
    # Cut short, then a flipped byte with the header intact: both are
    # refused by the checksum, compiled again and replaced.
    for damaged in (whole[: len(whole) // 2], whole[:-1] + bytes([whole[-1] ^ 1])):
        written.write_bytes(damaged)
        _gram_in_a_process(cache)
        assert written.read_bytes() == whole
    # Nothing but the one file: the temporary names were renamed.
    assert [p.name for p in cache.iterdir()] == [written.name]


def test_an_unwritable_cache_costs_a_compilation_not_an_answer(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("a file where the cache folder would be")
    _gram_in_a_process(not_a_folder)
    assert not_a_folder.read_text().startswith("a file")


def test_kernel_is_chosen_by_the_work_never_by_timing():
    # Few rows do not repay loading the kernel; a rank's slice that is large
    # enough uses it from its first block on.
    x, y = np.ones((100, 8)), np.ones((100, 1))
    small = StatisticsAccumulator(8, 1)
    small.add(x, y)
    assert small._gram_kernel is None
    large = StatisticsAccumulator(8, 1, expected_rows=KERNEL_MIN_WORK // 100)
    large.add(x, y)
    assert large._gram_kernel is not None
    never = StatisticsAccumulator(8, 1, use_kernel=False, expected_rows=10**12)
    never.add(x, y)
    assert never._gram_kernel is None


def test_the_environment_forces_or_refuses_the_kernel(monkeypatch):
    x, y = np.ones((100, 8)), np.ones((100, 1))
    monkeypatch.setenv("MPITRAIN_GRAM_KERNEL", "always")
    forced = StatisticsAccumulator(8, 1)
    forced.add(x, y)
    assert forced._gram_kernel is not None
    monkeypatch.setenv("MPITRAIN_GRAM_KERNEL", "never")
    refused = StatisticsAccumulator(8, 1, expected_rows=10**12)
    refused.add(x, y)
    assert refused._gram_kernel is None
    monkeypatch.setenv("MPITRAIN_GRAM_KERNEL", "sometimes")
    with pytest.raises(ValueError, match="MPITRAIN_GRAM_KERNEL='sometimes'"):
        StatisticsAccumulator(8, 1)


@pytest.mark.mpi(ranks=[2])
def test_streamed_train_with_the_kernel_equals_sklearn(
    tmp_path, mpi_ranks, mpitrain_cli
):
    # The streamed exact path on both ranks, weighted, through the kernel.
    from conftest import write_h5
    from sklearn.linear_model import Ridge

    from mpitrain.model_io import load_model
    from mpitrain.testing import mpirun

    rng = np.random.default_rng(7)
    X = rng.standard_normal((20_000, 12)) * 5 + 100
    y = X @ rng.standard_normal(12) + rng.standard_normal(20_000)
    w = rng.random(20_000) + 0.5
    path = write_h5(tmp_path / "d.h5", X, y, sample_weight=w)
    out = tmp_path / "m.skops"
    run = mpirun(
        mpi_ranks,
        [
            *mpitrain_cli,
            "train",
            path,
            "--model",
            "ridge",
            "--sample-weight",
            "sample_weight",
        ]
        + ["--out", str(out), "--quiet"],
        env={"MPITRAIN_GRAM_KERNEL": "always"},
    )
    assert run.returncode == 0, run.stderr
    assert "using BLAS" not in run.stderr, run.stderr
    ref = Ridge().fit(X, y, sample_weight=w)
    got = load_model(out)
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-9)
    assert got.intercept_ == pytest.approx(ref.intercept_, rel=1e-9)


def test_cache_directories_follow_the_environment(monkeypatch, tmp_path):
    from mpitrain.stats._gram_kernels import cache_directories

    monkeypatch.setenv("MPITRAIN_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_directories() == [tmp_path / "mine"]
    monkeypatch.delenv("MPITRAIN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    beside, user = cache_directories()
    assert beside.name == "__pycache__" and beside.parent.name == "stats"
    assert user == tmp_path / "xdg" / "mpitrain"
    # A relative XDG_CACHE_HOME is ignored; without a home there is no user cache.
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert cache_directories() == [beside]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directories() == [beside, tmp_path / "home" / ".cache" / "mpitrain"]
    monkeypatch.setattr("os.path.expanduser", lambda path: path)
    assert cache_directories() == [beside]
