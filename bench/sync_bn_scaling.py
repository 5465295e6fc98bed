"""SyncBatchNorm scaling: one training step (forward + backward) on a fixed global batch
split over 1, 2 and 4 MPI ranks, and the bytes allreduced per step.

    python bench/sync_bn_scaling.py [--shape 64 64 56 56] [--ranks 1 2 4] [--steps 20]
                                    [--threads 1] [--dtype float32] [--json FILE]

launches ``mpirun -n R python bench/sync_bn_scaling.py --worker ...`` for each R (Open
MPI: oversubscription allowed, shared memory and loopback only) and prints a Markdown
table.  Each rank holds N / R samples; a step's time is the slowest rank's (median over
steps, after a barrier); "comm" is the time spent inside Allreduce (including the wait
for the slowest rank).  Bytes are what each rank hands to Allreduce per step (forward
statistics + backward sums), counted by a wrapper around COMM_WORLD.  The single-process
``fastnorm.batch_norm`` + backward on the whole batch is the baseline.  Needs mpirun and
mpi4py (pip install 'fastnorm[distributed]').
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


class CountingComm:
    """COMM_WORLD with Allreduce calls, bytes and seconds counted."""

    def __init__(self, comm):
        self.comm = comm
        self.calls = self.bytes = 0
        self.seconds = 0.0

    def Get_rank(self):
        return self.comm.Get_rank()

    def Get_size(self):
        return self.comm.Get_size()

    def Allreduce(self, sendbuf, recvbuf, *args):
        self.calls += 1
        self.bytes += np.asarray(sendbuf).nbytes
        t0 = time.perf_counter()
        self.comm.Allreduce(sendbuf, recvbuf, *args)
        self.seconds += time.perf_counter() - t0


def worker(args):
    from mpi4py import MPI

    import fastnorm
    from fastnorm.distributed import sync_batch_norm, sync_batch_norm_backward

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    fastnorm.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype)
    n, c = args.shape[0], args.shape[1]
    rng = np.random.default_rng(rank)
    local_shape = (n // size + (rank < n % size),) + tuple(args.shape[1:])
    x = rng.standard_normal(local_shape).astype(dtype)
    dy = rng.standard_normal(local_shape).astype(dtype)
    w, b = np.ones(c, dtype), np.zeros(c, dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    # Methods interleaved step by step, so that the load of a shared machine hits all alike.
    methods = ["gather", "two_step"] + (["single_process"] if size == 1 else [])
    comms = {m: CountingComm(world) for m in methods}
    steps = {m: [] for m in methods}
    comm_times = {m: [] for m in methods}
    per_step = {}
    for i in range(args.warmup + args.steps):
        for method in methods:
            comm = comms[method]
            world.Barrier()
            calls0, bytes0, seconds0 = comm.calls, comm.bytes, comm.seconds
            t0 = time.perf_counter()
            if method == "single_process":  # the baseline: the whole (same) batch in one process
                _, mean, rstd = fastnorm.batch_norm(x, w, b, rm, rv)
                fastnorm.batch_norm_backward(dy, x, w, mean, rstd, bias=b)
            else:
                _, mean, rstd = sync_batch_norm(x, w, b, rm, rv, comm=comm, stats_reduction=method)
                sync_batch_norm_backward(dy, x, w, mean, rstd, comm=comm, bias=b)
            elapsed = time.perf_counter() - t0
            if i >= args.warmup:
                steps[method].append(world.allreduce(elapsed, op=MPI.MAX))
                comm_times[method].append(world.allreduce(comm.seconds - seconds0, op=MPI.MAX))
                per_step[method] = (comm.calls - calls0, comm.bytes - bytes0)
    rows = {m: {"step_ms": 1e3 * float(np.median(steps[m])),
                "comm_ms": 1e3 * float(np.median(comm_times[m])),
                "allreduce_calls": per_step[m][0], "allreduce_bytes": per_step[m][1]} for m in methods}
    if size == 1:
        rows["single_process_ms"] = rows.pop("single_process")["step_ms"]
    if rank == 0:
        rows.update(ranks=size, local_batch=local_shape[0])
        print("RESULT " + json.dumps(rows), flush=True)


def mpi_env(mpirun):
    env = dict(os.environ)
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=60)
    if "Open MPI" in version.stdout + version.stderr:
        env.update(OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_ALLOW_RUN_AS_ROOT="1",
                   OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_btl="self,vader",
                   OMPI_MCA_oob_tcp_if_include="lo")
    return env


def launcher(args):
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if mpirun is None:
        sys.exit("sync_bn_scaling: mpirun/mpiexec not found (apt-get install openmpi-bin libopenmpi-dev)")
    results = []
    for ranks in args.ranks:
        cmd = [mpirun, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker",
               "--shape", *map(str, args.shape), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--dtype", args.dtype]
        done = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env(mpirun), timeout=args.timeout)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"sync_bn_scaling: {' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        results.append(json.loads(lines[0][len("RESULT "):]))
    base = next((r["single_process_ms"] for r in results if "single_process_ms" in r), None)
    shape = "x".join(map(str, args.shape))
    print(f"SyncBatchNorm forward+backward, global batch {shape} {args.dtype}, "
          f"{args.threads} thread(s) per rank, {os.cpu_count()} CPUs")
    if base is not None:
        print(f"single-process batch_norm + backward on the whole batch: {base:.2f} ms\n")
    print("| ranks | local N | reduction | step ms | comm ms | speedup vs 1 rank | Allreduce calls/step | bytes/step/rank |")
    print("|---|---|---|---|---|---|---|---|")
    one = {red: results[0][red]["step_ms"] for red in ("gather", "two_step")} if results[0]["ranks"] == 1 else None
    for r in results:
        for red in ("gather", "two_step"):
            row = r[red]
            speedup = f"{one[red] / row['step_ms']:.2f}x" if one else "-"
            print(f"| {r['ranks']} | {r['local_batch']} | {red} | {row['step_ms']:.2f} | {row['comm_ms']:.3f} | "
                  f"{speedup} | {row['allreduce_calls']} | {row['allreduce_bytes']} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape": args.shape, "dtype": args.dtype, "threads": args.threads,
                       "results": results}, fh, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 64, 56, 56])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    worker(args) if args.worker else launcher(args)


if __name__ == "__main__":
    main()
