"""The lecture's claims about activations, regularization and normalization, tested on
real data with fastnorm's layers: ``python -m fastnorm.experiments [--quick] [--only NAME
...] [--out DIR] [--seed N] [--threads N]`` writes ``DIR/report.md`` and PNG figures.

Each experiment is a function ``run_<name>(ctx) -> ExperimentResult`` over the public
API (``fastnorm.Linear``, ``Dropout``, ``BatchNorm1d``, ``optim.SGD``, ...); ``ctx`` is a
:class:`Context` (quick or full size, seeds, output folder, progress bars).  Figures
need matplotlib (``pip install fastnorm[experiments]``); without it the report is
written without them.
"""
import contextlib
import os
import sys
import time

import fastnorm as fn

from ._common import Context, ExperimentResult
from ._report import write_report
from .activation_experiments import run_sparsity, run_speed, run_vanishing
from .normalization_experiments import run_batchnorm, run_layernorm_table, run_small_batch
from .regularization_experiments import (run_dropout_data, run_dropout_rate, run_early_stopping,
                                         run_weight_decay)

__all__ = ["EXPERIMENTS", "Context", "ExperimentResult", "run_experiments", "main"]

#: ``--only`` name -> experiment function, in report order.
EXPERIMENTS = {
    "vanishing": run_vanishing,
    "sparsity": run_sparsity,
    "speed": run_speed,
    "dropout-rate": run_dropout_rate,
    "dropout-data": run_dropout_data,
    "weight-decay": run_weight_decay,
    "early-stopping": run_early_stopping,
    "batchnorm": run_batchnorm,
    "small-batch": run_small_batch,
    "layernorm-table": run_layernorm_table,
}


@contextlib.contextmanager
def _thread_limits(threads):
    """fastnorm's kernels and the BLAS behind ``numpy.matmul`` both on ``threads`` threads.

    Both pools are limited together: on a 2-core machine OpenMP threads spinning after
    a fastnorm kernel and OpenBLAS threads inside a matmul fight for the cores (a
    784-256-256-256-10 training step with dropout went from 2 ms to 35-180 ms)."""
    previous = fn.set_num_threads(threads)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            limiter = contextlib.nullcontext()
        else:
            limiter = threadpool_limits(limits=threads, user_api="blas")
        with limiter:
            yield
    finally:
        fn.set_num_threads(previous)


def run_experiments(names=None, *, quick=False, seed=0, out_dir="fastnorm-experiments", threads=1,
                    progress=None, command=None, log=None):
    """Run the named experiments (all by default) and write ``out_dir/report.md``.

    Returns ``(report_path, results)``.  threads: fastnorm and BLAS threads (1 keeps
    results bit-reproducible and avoids the oversubscription described in
    ``_thread_limits``).  log: a file (e.g. sys.stderr) for one line per experiment;
    None is silent."""
    names = list(EXPERIMENTS) if not names else list(names)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"run_experiments: unknown experiment names {unknown} "
                         f"(known: {', '.join(EXPERIMENTS)})")
    names = [n for n in EXPERIMENTS if n in set(names)]
    if command is None:
        command = "python -m fastnorm.experiments" + (" --quick" if quick else "") + \
            (f" --seed {seed}" if seed else "")
    ctx = Context(quick=quick, seed=seed, out_dir=out_dir, progress=progress)
    if log is not None and not ctx.figures:
        print("fastnorm.experiments: matplotlib is not installed, so the report will have no "
              "figures (pip install fastnorm[experiments])", file=log)
    results = []
    start = time.perf_counter()
    with _thread_limits(threads):
        for i, name in enumerate(names, 1):
            ctx.experiment = name
            t0 = time.perf_counter()
            result = EXPERIMENTS[name](ctx)
            result.seconds = time.perf_counter() - t0
            results.append(result)
            if log is not None:
                verdict = {True: "claim held", False: "claim did not hold", None: "claim partly held"}
                print(f"[{i}/{len(names)}] {name}: {verdict[result.held]} ({result.seconds:.1f} s)",
                      file=log, flush=True)
    settings = {"quick": quick, "seed": seed, "threads": threads, "backend": fn.backend(),
                "isa": fn.isa(), "seconds": time.perf_counter() - start,
                "experiments": names}
    path = write_report(results, out_dir, settings, command)
    return path, results


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m fastnorm.experiments",
        description="Test the lecture's claims about activations, regularization and normalization "
                    "on real data with fastnorm's layers; writes DIR/report.md and PNG figures.")
    parser.add_argument("--quick", action="store_true",
                        help="small data and few epochs (under 2 minutes; what CI runs)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(EXPERIMENTS),
                        help="run only these experiments: " + ", ".join(EXPERIMENTS))
    parser.add_argument("--out", default="fastnorm-experiments", metavar="DIR",
                        help="output folder for report.md and the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random stream (default: 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for fastnorm's kernels and for BLAS (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    command = "python -m fastnorm.experiments" + (" --quick" if args.quick else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    command += f" --out {args.out}" + (f" --seed {args.seed}" if args.seed else "") + \
        (f" --threads {args.threads}" if args.threads != 1 else "")
    path, _ = run_experiments(args.only, quick=args.quick, seed=args.seed, out_dir=args.out,
                              threads=args.threads, progress=False if args.no_progress else None,
                              command=command, log=sys.stderr)
    print(f"report written to {os.path.abspath(path)}")
    return 0
