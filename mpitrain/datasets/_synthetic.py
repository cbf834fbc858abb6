"""Synthetic data sets written block by block, reproducible from the seed alone."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from mpitrain.data import atomic_path
from mpitrain.errors import MpitrainError

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = [
    "MAKE_DATA_BLOCK_ROWS",
    "make_data",
]


#: Rows generated per random block by :func:`make_data`.  Block ``b`` always
#: uses the random stream ``(seed, b)``, so the file depends only on the seed.
MAKE_DATA_BLOCK_ROWS = 65536


def _block_rng(seed: int, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, block])


def make_data(
    kind: str,
    out: str | os.PathLike,
    *,
    rows: int,
    features: int,
    classes: int = 2,
    informative: int | None = None,
    noise: float | None = None,
    seed: int = 0,
    dtype: str = "float64",
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write a synthetic regression or classification data set to HDF5.

    Memory stays bounded by one block of :data:`MAKE_DATA_BLOCK_ROWS` rows,
    so files larger than RAM can be written.  Block ``b`` is drawn from its
    own random stream ``(seed, b)``: the file depends only on the arguments,
    never on how many processes run.  The file appears under its final name
    only when complete.  Not collective: call it on one rank.

    Regression: ``y = X @ coef + intercept + noise * N(0, 1)`` with the
    first ``informative`` coefficients non-zero.  Classification: ``y`` is
    the arg-max over classes of ``X[:, :informative] @ W + noise * Gumbel``,
    i.e. drawn from a multinomial logistic model (``noise`` is its
    temperature), labels ``0 .. classes - 1``.

    Returns
    -------
    dict
        The generating parameters, also stored as attributes of the file.
    """
    import h5py

    if kind not in ("regression", "classification"):
        raise MpitrainError(
            f"kind must be 'regression' or 'classification', got {kind!r}"
        )
    if rows < 1 or features < 1:
        raise MpitrainError(
            f"need at least one row and one feature, got rows={rows}, features={features}"
        )
    informative = features if informative is None else informative
    if not 1 <= informative <= features:
        raise MpitrainError(
            f"informative must be between 1 and features={features}, got {informative}"
        )
    if kind == "classification" and classes < 2:
        raise MpitrainError(f"classification needs at least 2 classes, got {classes}")
    if dtype not in ("float32", "float64"):
        raise MpitrainError(f"dtype must be float32 or float64, got {dtype!r}")
    noise = (1.0 if kind == "regression" else 0.5) if noise is None else float(noise)
    if noise < 0:
        raise MpitrainError(f"noise must be non-negative, got {noise}")

    model_rng = np.random.default_rng([seed, 0])
    meta: dict = {
        "kind": kind,
        "rows": rows,
        "features": features,
        "informative": informative,
        "noise": noise,
        "seed": seed,
        "generator": "mpitrain make-data",
    }
    if kind == "regression":
        coef = np.zeros(features)
        coef[:informative] = model_rng.uniform(-10, 10, size=informative)
        intercept = float(model_rng.uniform(-5, 5))
        meta.update(coef=coef, intercept=intercept)
    else:
        weights = model_rng.normal(size=(informative, classes))
        meta.update(classes=classes)

    # ~4 MiB chunks of whole rows: a rank's row range maps onto whole chunks.
    chunk_rows = int(
        max(1, min(rows, (4 << 20) // (features * np.dtype(dtype).itemsize)))
    )
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            X_ds = f.create_dataset(
                "X", shape=(rows, features), dtype=dtype, chunks=(chunk_rows, features)
            )
            y_dtype = dtype if kind == "regression" else np.int64
            y_ds = f.create_dataset(
                "y", shape=(rows,), dtype=y_dtype, chunks=(min(rows, 1 << 18),)
            )
            for block, start in enumerate(range(0, rows, MAKE_DATA_BLOCK_ROWS)):
                stop = min(rows, start + MAKE_DATA_BLOCK_ROWS)
                rng = _block_rng(seed, block)
                X = rng.standard_normal((stop - start, features))
                if kind == "regression":
                    y = X @ coef + intercept + noise * rng.standard_normal(stop - start)
                else:
                    scores = X[:, :informative] @ weights
                    if noise > 0:
                        scores += noise * rng.gumbel(size=scores.shape)
                    y = scores.argmax(axis=1)
                X_ds[start:stop] = X.astype(dtype, copy=False)
                y_ds[start:stop] = y
                if progress is not None:
                    progress(stop)
            for key, value in meta.items():
                f.attrs[key] = value
    return meta
