"""``describe``: statistics of every column, each rank streaming its own rows."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mpitrain.workflow._paths import Named, check_paths, data_inputs
from mpitrain.workflow._run import Run

if TYPE_CHECKING:  # pragma: no cover
    from mpi4py.MPI import Intracomm

__all__ = ["describe", "describe_structure", "fit_structure", "format_structure"]


def describe(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    x: str = "X",
    y: str | None = None,
    json: str | os.PathLike | None = None,
    pca: int | None = None,
    clusters: int | None = None,
    plots: str | os.PathLike | None = None,
    seed: int = 0,
    comm: Intracomm | None = None,
    quiet: bool = False,
    threads_per_rank: int | None = None,
) -> dict:
    """Describe every column of a data set, as ``mpitrain describe`` does. Collective over ``comm``.

    Count, missing values, mean, std, min, max and approximate quantiles of
    every column, class counts of a label column and rows per rank, computed
    by reduction (no rows move between ranks).  Rank 0 prints the table.

    Parameters
    ----------
    data : str, path or sequence of them
        HDF5 file(s) or glob patterns, one row space.
    x : str, default="X"
        Feature dataset.
    y : str or None, default=None
        Target or label dataset to describe too.
    json : str or path or None, default=None
        Also write the result as JSON (rank 0).
    pca : int or None, default=None
        Also the principal components of all rows (``--pca K``): the
        variance each of the first ``K`` explains, printed, and in the
        result under ``"pca"``.  The rows are read into memory for it.
    clusters : int or None, default=None
        With ``pca``: also k-means with this many clusters (k-means++,
        ``random_state=seed``) on the rows, and the cluster sizes
        (``--clusters N``).
    plots : str or path or None, default=None
        With ``pca``: a folder for ``explained_variance.png`` and
        ``projection.png``, the rows projected on the first two components
        from 2-D histograms reduced over the ranks (no row is gathered),
        coloured by cluster with ``clusters`` (``--plots DIR``).
    seed : int, default=0
        ``random_state`` of the k-means.
    comm : mpi4py.MPI.Intracomm or None, default=None
        ``None`` means ``COMM_WORLD``.
    quiet : bool, default=False
        No progress output (the table is printed all the same).
    threads_per_rank : int or None, default=None
        BLAS/OpenMP threads per rank (see :func:`mpitrain.workflow.limit_threads`).

    Returns
    -------
    dict
        :func:`mpitrain.describe.describe_file`'s result with ``seconds``,
        the same on every rank.
    """
    from mpitrain.data import write_json
    from mpitrain.describe import describe_file, format_description

    if (clusters or plots) and not pca:
        from mpitrain.errors import UsageError

        raise UsageError("--clusters and --plots need --pca K")
    run = Run(comm, quiet=quiet, threads_per_rank=threads_per_rank)
    if json or plots:
        # Before any row is read: the JSON file and the plots must not be data files.
        check_paths(
            run.comm,
            "describe",
            data_inputs(data, (x, y)),
            [Named("--json", json), Named("--plots", plots, folder=True)],
        )
    tic = time.perf_counter()
    result = describe_file(data, x=x, y=y, comm=run.comm)
    if pca:
        result["pca"] = describe_structure(
            data, x, pca, run, clusters=clusters, plots=plots, seed=seed
        )
    result["seconds"] = time.perf_counter() - tic
    if json:
        run.on_root(f"writing {json}", lambda: write_json(json, result))
    if run.rank == 0:
        print(format_description(result), flush=True)
        if pca:
            print("\n" + format_structure(result["pca"]), flush=True)
        if json:
            print(f"\nJSON written to {json}", flush=True)
    return result


#: Bins per axis of the 2-D projection's histograms.
PROJECTION_BINS = 64


def describe_structure(
    data,
    x: str,
    n_components: int,
    run: Run,
    *,
    clusters: int | None = None,
    plots: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict:
    """Principal components (and clusters) of all rows, with plots. Collective over ``run.comm``.

    Every rank reads its rows, fits :class:`mpitrain.decomposition.PCA`
    (all components, for the whole spectrum) and, with ``clusters``,
    :class:`mpitrain.cluster.KMeans` on them; the rows projected on the
    first two components are counted in 2-D histograms (one per cluster)
    on shared edges and summed over the ranks.  Rank 0 draws the plots.

    Returns
    -------
    dict
        ``explained_variance``, ``explained_variance_ratio`` (first
        ``n_components``), ``total_components``, and with ``clusters``:
        ``cluster_sizes``, ``inertia``, ``n_iter``; ``plots`` (file names).
    """
    import numpy as np

    from mpitrain.data import read_rows

    rows = read_rows(data, x=x, y=None, comm=run.comm)
    X = np.asarray(rows.X, dtype=np.float64)
    if not 1 <= n_components <= X.shape[1]:
        from mpitrain.errors import UsageError

        raise UsageError(
            f"--pca {n_components}: the data have {X.shape[1]} features (choose 1 to {X.shape[1]})"
        )
    run.say(f"principal components of {rows.n_rows:,} rows on {run.size} rank(s)")
    _, _, out = fit_structure(X, run, clusters=clusters, plots=plots, seed=seed)
    for key in ("explained_variance", "explained_variance_ratio"):
        out[key] = out[key][:n_components]
    return out


def fit_structure(
    X,
    run: Run,
    *,
    clusters: int | None = None,
    plots: str | os.PathLike | None = None,
    seed: int = 0,
) -> tuple:
    """PCA (all components) and, with ``clusters``, k-means of the rows ``X``, with plots. Collective over ``run.comm``.

    The one structure step of ``describe --pca`` and the demo: every rank
    passes its own rows.

    Returns
    -------
    pca : mpitrain.decomposition.PCA
    kmeans : mpitrain.cluster.KMeans or None
    summary : dict
        ``explained_variance``, ``explained_variance_ratio`` (every
        component), ``total_components``, ``pca_seconds``, and with
        ``clusters``: ``cluster_sizes`` (all ranks), ``inertia``,
        ``n_iter``, ``kmeans_seconds``; with ``plots``: ``plots`` (file
        names).
    """
    import numpy as np

    from mpitrain.cluster import KMeans
    from mpitrain.comm import allreduce_sum
    from mpitrain.decomposition import PCA

    tic = time.perf_counter()
    pca = PCA(comm=run.comm).fit(X)
    out: dict = {
        "explained_variance": pca.explained_variance_.tolist(),
        "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
        "total_components": int(pca.n_components_),
        "pca_seconds": time.perf_counter() - tic,
    }
    km = None
    if clusters:
        run.say(f"k-means with {clusters} clusters (k-means++, random_state={seed})")
        tic = time.perf_counter()
        km = KMeans(clusters, random_state=seed, comm=run.comm).fit(X)
        seconds = time.perf_counter() - tic
        sizes = allreduce_sum(
            np.bincount(km.labels_, minlength=clusters).astype(np.float64), run.comm
        )
        out.update(
            cluster_sizes=[int(c) for c in sizes],
            inertia=float(km.inertia_),
            n_iter=int(km.n_iter_),
            kmeans_seconds=seconds,
        )
    if plots:
        labels = None if km is None else km.labels_
        out["plots"] = structure_plots(pca, X, labels, clusters, plots, run)
    return pca, km, out


def structure_plots(pca, X, labels, clusters, folder, run: Run) -> list[str]:
    """The explained-variance and projection plots (histograms reduced, drawn on rank 0). Collective.

    ``pca`` and ``labels`` (this rank's cluster of each row of ``X``, or
    ``None``) are fitted already; returns the two file names.
    """
    import numpy as np

    from mpitrain.comm import allreduce_minmax, allreduce_sum

    os.makedirs(folder, exist_ok=True)
    n_axes = min(2, pca.n_components_)
    projected = pca.transform(X)[:, :n_axes]
    if n_axes == 1:
        projected = np.column_stack([projected[:, 0], np.zeros(len(projected))])
    # Rows' extent on both axes: [min, max] of every rank, reduced (a rank without rows adds ±inf).
    low, high = allreduce_minmax(
        np.concatenate(
            [
                projected.min(axis=0, initial=np.inf),
                projected.max(axis=0, initial=-np.inf),
            ]
        ),
        run.comm,
    )
    lo, hi = low[:2], high[2:]
    hi = np.where(hi > lo, hi, lo + 1.0)  # a constant axis still gets a bin
    edges = [np.linspace(lo[j], hi[j], PROJECTION_BINS + 1) for j in range(2)]
    groups = clusters or 1
    hist = np.zeros((groups, PROJECTION_BINS, PROJECTION_BINS))
    for j in range(groups):
        mine = projected if labels is None else projected[labels == j]
        hist[j] = np.histogram2d(mine[:, 0], mine[:, 1], bins=edges)[0]
    allreduce_sum(hist, run.comm)
    files = [
        os.path.join(folder, "explained_variance.png"),
        os.path.join(folder, "projection.png"),
    ]

    def draw() -> None:
        from mpitrain.plots import plot_explained_variance, plot_projection

        plot_explained_variance(pca.explained_variance_ratio_, files[0])
        plot_projection(
            hist,
            edges[0],
            edges[1],
            files[1],
            cluster_sizes=hist.sum(axis=(1, 2)) if clusters else None,
            title="rows on the first two principal components"
            + (f", {clusters} k-means clusters" if clusters else ""),
        )

    run.on_root("drawing the PCA plots", draw)
    run.say("plots written: " + ", ".join(files))
    return files


def format_structure(structure: dict) -> str:
    """The PCA (and k-means) summary as text. Pure."""
    ratio = structure["explained_variance_ratio"]
    lines = [
        f"principal components (first {len(ratio)} of {structure['total_components']}):",
        f"{'component':>9}  {'variance':>12}  {'share':>8}  {'cumulative':>10}",
    ]
    total = 0.0
    for i, (variance, share) in enumerate(zip(structure["explained_variance"], ratio)):
        total += share
        lines.append(f"{i + 1:>9}  {variance:>12.5g}  {share:>8.2%}  {total:>10.2%}")
    if "cluster_sizes" in structure:
        sizes = structure["cluster_sizes"]
        lines.append(
            f"k-means: {len(sizes)} clusters, inertia {structure['inertia']:.6g}, "
            f"{structure['n_iter']} iterations; rows per cluster: "
            + ", ".join(f"{c:,}" for c in sizes)
        )
    return "\n".join(lines)
