#!/usr/bin/env python
"""Benchmark: one loss-and-gradient evaluation of the exact linear classifiers, fused or in two products.

One rank's share of an L-BFGS evaluation, in one process on one BLAS
thread: the fused kernels of ``mpitrain.linear_model`` (dense rows read once,
in blocks) against the two whole products they replaced (``X @ w``, then
``Xᵀ r``), which mpitrain still runs for sparse rows (the module's private
``_*_two_products``, called here on the same dense rows).  Also the pieces
of the two-product evaluation, so that one sees where its time went, and
the fused binomial kernel at several block sizes.  Every variant is timed
in turn inside each repeat (side by side under the same load); medians::

    python scripts/bench_loss_kernels.py --rows 250000 --features 100 --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.special import expit
from threadpoolctl import threadpool_limits

from mpitrain.linear_model import _classifiers as kernels


def timed_side_by_side(
    variants: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Median milliseconds of each variant, all run once per repeat, in turn."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for f in variants.values():
        f()  # warm up: first touches, lazy imports
    for _ in range(repeats):
        for name, f in variants.items():
            tic = time.perf_counter()
            f()
            seconds[name].append(time.perf_counter() - tic)
    return {name: 1e3 * statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results/bench_loss_kernels.json")
    )
    args = parser.parse_args()
    from mpitrain.report import provenance

    made_with = provenance(Path(__file__).resolve().parent)
    load_before = os.getloadavg()
    threadpool_limits(1)  # one rank's core: the benchmark's 2 ranks x 1 thread

    rng = np.random.default_rng(0)
    n, d, k = args.rows, args.features, args.classes
    X = rng.normal(size=(n, d))
    s = rng.uniform(0.5, 2.0, n)
    y = rng.integers(0, 2, n).astype(np.float64)
    coef = rng.normal(scale=0.1, size=d + 1)
    y_index = rng.integers(0, k, n)
    coef_k = rng.normal(scale=0.1, size=(k, d + 1))
    Y = np.where(y_index[:, None] == np.arange(k), 1.0, -1.0)
    cost = np.ones((n, k))
    X32 = X.astype(np.float32)
    w, b = coef[:d], coef[d]
    z = X @ w + b
    r = s * (expit(z) - y)

    evaluations = timed_side_by_side(
        {
            "binomial two products": lambda: kernels._binomial_two_products(
                coef, X, y, s, True
            ),
            "binomial fused": lambda: kernels.binomial_loss_gradient(
                coef, X, y, s, True
            ),
            "binomial fused, float32 rows": lambda: kernels.binomial_loss_gradient(
                coef, X32, y, s, True
            ),
            f"multinomial {k} classes two products": lambda: (
                kernels._multinomial_two_products(coef_k, X, y_index, s, True)
            ),
            f"multinomial {k} classes fused": lambda: kernels.multinomial_loss_gradient(
                coef_k, X, y_index, s, True
            ),
            f"squared hinge {k} problems two products": lambda: (
                kernels._squared_hinge_two_products(coef_k, X, Y, cost, 1.0)
            ),
            f"squared hinge {k} problems fused": lambda: (
                kernels.squared_hinge_loss_gradient(coef_k, X, Y, cost, 1.0)
            ),
        },
        args.repeats,
    )
    pieces = timed_side_by_side(
        {
            "X @ w (BLAS dgemv, from memory)": lambda: X @ w,
            "X.T @ r (BLAS dgemv, from memory)": lambda: X.T @ r,
            "row dots of X and w (np.vecdot or einsum, from memory)": lambda: (
                kernels._row_dots(X, w, np.empty(n))
            ),
            "sum of X (reading it once)": lambda: np.add.reduce(X.reshape(-1)),
            "logaddexp(0, z)": lambda: np.logaddexp(0.0, z),
            "expit(z)": lambda: expit(z),
            "exp(-|z|)": lambda: np.exp(-np.abs(z)),
            "pointwise part of the two-product evaluation": lambda: (
                float(s @ (np.logaddexp(0.0, z) - y * z)),
                s * (expit(z) - y),
            ),
        },
        args.repeats,
    )
    default_block = kernels._BLOCK_BYTES
    block_sizes = [256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20]

    def with_block(size: int) -> Callable[[], object]:
        def evaluate() -> object:
            kernels._BLOCK_BYTES = size
            try:
                return kernels.binomial_loss_gradient(coef, X, y, s, True)
            finally:
                kernels._BLOCK_BYTES = default_block

        return evaluate

    blocks = timed_side_by_side(
        {f"{size >> 10} kB": with_block(size) for size in block_sizes}, args.repeats
    )
    result = {
        "benchmark": "one loss and gradient evaluation on one rank's rows, 1 BLAS thread",
        "rows": n,
        "features": d,
        "classes": k,
        "dtype": "float64",
        "repeats": args.repeats,
        "block_bytes": default_block,
        "load_average_before_after": [load_before, os.getloadavg()],
        "provenance": made_with,
        "median_ms": {
            "evaluations": evaluations,
            "pieces_of_the_two_product_evaluation": pieces,
            "binomial_fused_by_block_size": blocks,
        },
        "ratio_fused_to_two_products": {
            "binomial": evaluations["binomial fused"]
            / evaluations["binomial two products"],
            "multinomial": evaluations[f"multinomial {k} classes fused"]
            / evaluations[f"multinomial {k} classes two products"],
            "squared_hinge": evaluations[f"squared hinge {k} problems fused"]
            / evaluations[f"squared hinge {k} problems two products"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {key: result[key] for key in ("median_ms", "ratio_fused_to_two_products")},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
