"""Allreduce between nodes (TCP) against within a node (shared memory), and the cost model.

Runs on the local multi-node Slurm (``scripts/local_slurm.sh start --nodes
2``), side by side in one run so that both sides suffer the same load:

* ``tcp``: 2 ranks on 2 nodes (network namespaces on one bridge): MPICH's
  messages go over TCP;
* ``shm``: 2 ranks on 1 node: MPICH's shared memory.

Each side times ``mpitrain.comm.allreduce_sum`` (the Allreduce of the exact
path) over float64 buffers from 8 B to 8 MB, median of repeats, and fits the
cost model of docs/performance.md for P = 2 (L = 1): ``t(m) = α + m/β +
m/γ`` for m ≤ 2 KiB, ``2α + m/β + m/(2γ)`` above; α from the small
messages, β from the slope between the two largest, with γ measured on this
machine (numpy's sum of two buffers).  Writes bench-results/allreduce.json.

    sudo scripts/local_slurm.sh start --nodes 2
    python scripts/bench_allreduce.py            # srun from here, with SLURM_CONF of that cluster

The pytest process rules apply here too: this process never initialises MPI;
the ranks run ``python scripts/bench_allreduce.py --worker``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = [8, 64, 512, 2048, 16 << 10, 128 << 10, 1 << 20, 8 << 20]
NODES_CONF = "/run/mpitrain-slurm-nodes/slurm.conf"
LAYOUTS = {
    "tcp": ["--nodes=2", "--ntasks-per-node=1"],
    "shm": ["--nodes=1", "--ntasks=2"],
}


def worker(repeats: int) -> None:
    """On every rank: time allreduce_sum per size; rank 0 prints JSON. Collective."""
    from mpitrain.comm import allreduce_sum, get_comm, node_layout

    comm = get_comm()
    layout = node_layout(comm)
    out = {"layout": layout, "seconds": {}}
    for size in SIZES:
        buf = np.ones(size // 8)
        allreduce_sum(buf, comm)  # warm-up: connections, buffers
        times = []
        for _ in range(repeats if size < (1 << 20) else max(5, repeats // 20)):
            allreduce_sum(np.ones(1), comm)  # line the ranks up
            tic = time.perf_counter()
            allreduce_sum(buf, comm)
            times.append(time.perf_counter() - tic)
        # Each rank's median, averaged over the ranks.
        mine = np.array([statistics.median(times)])
        out["seconds"][str(size)] = (
            float(allreduce_sum(mine, comm)[0]) / comm.Get_size()
        )
    if comm.Get_rank() == 0:
        print("RESULT " + json.dumps(out), flush=True)


def sum_speed() -> float:
    """γ: bytes per second of summing two float64 buffers (8 MB) here. Local."""
    a, b = np.ones(1 << 20), np.ones(1 << 20)
    times = []
    for _ in range(20):
        tic = time.perf_counter()
        np.add(a, b, out=a)
        times.append(time.perf_counter() - tic)
    return a.nbytes / min(times)


def fit_model(seconds: dict[str, float], gamma: float) -> dict[str, float]:
    """α and β of the cost model for P = 2 (L = 1). Pure.

    α: the median time of the messages of at most 2 KiB (their m/β and m/γ
    are below 1 µs), robust to one noisy size; β: from the slope between the
    two largest messages, where ``t = 2α + m/β + m/(2γ)``, so α cancels.
    """
    small = [seconds[str(m)] for m in SIZES if m <= 2048]
    alpha = statistics.median(small)
    m1, m2 = SIZES[-2], SIZES[-1]
    slope = (seconds[str(m2)] - seconds[str(m1)]) / (m2 - m1) - 1 / (2 * gamma)
    beta = 1 / slope if slope > 0 else float("inf")
    return {"alpha_us": alpha * 1e6, "beta_GBps": beta / 1e9}


def predicted(size: int, alpha_s: float, beta: float, gamma: float) -> float:
    """The cost model's Allreduce time at P = 2 (L = 1). Pure."""
    if size <= 2048:
        return alpha_s + size / beta + size / gamma
    return 2 * alpha_s + size / beta + size / (2 * gamma)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default="bench-results/allreduce.json")
    parser.add_argument("--note", default="", help="recorded in the JSON")
    args = parser.parse_args()
    if args.worker:
        worker(args.repeats)
        return 0

    from mpitrain.report import provenance

    made_with = provenance(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        "SLURM_CONF": os.environ.get("MPITRAIN_BENCH_SLURM_CONF", NODES_CONF),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    sides = {}
    for name, placement in LAYOUTS.items():
        command = [
            "srun",
            "--mpi=pmi2",
            "--kill-on-bad-exit=1",
            *placement,
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--repeats",
            str(args.repeats),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=600
        )
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        sides[name] = json.loads(line[len("RESULT ") :])
    gamma = sum_speed()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    result = {
        "benchmark": "mpitrain.comm.allreduce_sum, 2 ranks: across 2 nodes (TCP between "
        "network namespaces, MPICH OFI tcp provider) vs on 1 node (shared memory); "
        "each rank's median seconds, averaged over the 2 ranks",
        "sizes_bytes": SIZES,
        "gamma_GBps": gamma / 1e9,
        "load_average": load,
        "note": args.note,
        "provenance": made_with,
        "cost_model_assumed": {"alpha_us": 2.0, "beta_GBps": 10.0, "gamma_GBps": 5.0},
    }
    for name, side in sides.items():
        fitted = fit_model(side["seconds"], gamma)
        result[name] = {
            "layout": side["layout"],
            "seconds": side["seconds"],
            "fitted": fitted,
            "model_seconds_with_fitted": {
                str(s): predicted(
                    s, fitted["alpha_us"] * 1e-6, fitted["beta_GBps"] * 1e9, gamma
                )
                for s in SIZES
            },
        }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"load {' '.join(load)}; γ (sum) {gamma / 1e9:.1f} GB/s")
    print(
        f"{'bytes':>10} {'tcp µs':>10} {'shm µs':>10} {'model tcp':>10} {'model shm':>10}"
    )
    for s in SIZES:
        row = [result[n]["seconds"][str(s)] * 1e6 for n in ("tcp", "shm")]
        model = [
            result[n]["model_seconds_with_fitted"][str(s)] * 1e6 for n in ("tcp", "shm")
        ]
        print(
            f"{s:>10} {row[0]:>10.1f} {row[1]:>10.1f} {model[0]:>10.1f} {model[1]:>10.1f}"
        )
    for n in ("tcp", "shm"):
        f = result[n]["fitted"]
        print(f"{n}: α = {f['alpha_us']:.1f} µs, β = {f['beta_GBps']:.2f} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
