"""Benchmark: how busy a sweep keeps the GPUs. Runs the same demo sweep once per
`--gpus-per-trial` value (e.g. 0.25 packs four trials onto a GPU, 1 gives each trial a whole one),
samples `nvidia-smi` every `--interval` seconds over each sweep, and prints wall time, trials per
hour, mean GPU utilisation and peak GPU memory side by side.

    python -m raybench.bench.sweep_utilisation --gpus-per-trial 0.25 1 --trials 8

Each setting gets a fresh MLflow sqlite store and Tune storage under --out, so the sweeps do not
resume each other. Ray is started (and the demo data generated) before the first clock starts.
Without `nvidia-smi` (a CPU machine) utilisation is not sampled, and the script says so.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

QUERY = ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


@dataclass
class GpuSample:
    gpu: int
    utilisation: float  # percent of the sample period in which a kernel ran (nvidia-smi's definition)
    memory_mib: float


def parse_samples(lines) -> list[GpuSample]:
    """nvidia-smi CSV lines `index, utilization.gpu, memory.used` -> samples; other lines skipped."""
    out = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        try:
            out.append(GpuSample(int(parts[0]), float(parts[1]), float(parts[2])))
        except ValueError:  # "[N/A]" or a header
            continue
    return out


@dataclass
class UtilisationSummary:
    samples: int
    mean_utilisation: float  # mean over samples and GPUs, percent
    busy_fraction: float  # fraction of samples with utilisation >= 80 %
    peak_memory_mib: float


def summarise(samples: list[GpuSample], busy_threshold: float = 80.0) -> UtilisationSummary | None:
    if not samples:
        return None
    util = [s.utilisation for s in samples]
    return UtilisationSummary(len(samples), statistics.mean(util),
                              sum(u >= busy_threshold for u in util) / len(util),
                              max(s.memory_mib for s in samples))


@dataclass
class GpuSampler:
    """`nvidia-smi -lms` in the background for the duration of a `with` block."""
    interval_s: float = 0.5
    lines: list[str] = field(default_factory=list)

    def __enter__(self):
        self.proc = None
        if shutil.which("nvidia-smi") is None:
            return self
        self.proc = subprocess.Popen([*QUERY, f"-lms={int(self.interval_s * 1000)}"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.reader.join(timeout=10)

    @property
    def available(self) -> bool:
        return self.proc is not None


def parse_args(argv=None):
    from raybench.sweep.plan import parse_set
    from raybench.methods.base import BUDGETS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus-per-trial", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--categories", default="all")
    ap.add_argument("--trials", type=int, default=8, help="trials per category")
    ap.add_argument("--budget", default="default", choices=BUDGETS)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--interval", type=float, default=0.5, help="nvidia-smi sampling period, seconds")
    ap.add_argument("--out", default=None, help="folder for the stores (default: a temporary one)")
    args = ap.parse_args(argv)
    args.overrides = parse_set(args.overrides)
    return args


def main(argv=None) -> None:
    import ray

    from raybench import tracking
    from raybench.data import load_dataset
    from raybench.local_ray import start_local_ray
    from raybench.sweep.driver import run_sweep
    from raybench.sweep.plan import SweepSpec

    args = parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="raybench-util-"))
    load_dataset("demo", None, args.categories)  # generates the demo once, outside the clock
    start_local_ray(print, include_dashboard=False, log_to_driver=False)  # as a local sweep: loopback, auth
    print(f"cluster resources: {ray.cluster_resources()} | method {args.method}, {args.trials} trial(s) per "
          f"category, budget {args.budget}, {args.cpus_per_trial:g} CPU per trial, set {args.overrides or '{}'}")
    results = []
    for i, gpus in enumerate(args.gpus_per_trial):
        folder = out / f"{i}-gpus-{gpus:g}"  # fresh stores: a setting never resumes another
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        folder.mkdir(parents=True, exist_ok=True)
        spec = SweepSpec(dataset="demo", categories=args.categories, method=args.method, trials=args.trials,
                         budget=args.budget, overrides=dict(args.overrides), tracking_uri=uri,
                         storage=str(folder / "ray"), cpus_per_trial=args.cpus_per_trial, gpus_per_trial=gpus)
        with GpuSampler(args.interval) as sampler:
            start = time.perf_counter()
            run_sweep(spec, log=lambda *_: None)
            wall = time.perf_counter() - start
        finished = len(tracking.finished_runs(uri, "demo", include_final=True))
        summary = summarise(parse_samples(sampler.lines))
        if not sampler.available:
            print("nvidia-smi not found: GPU utilisation not sampled")
        results.append((gpus, wall, finished, summary))
        print(f"gpus/trial {gpus:g}: {finished} finished trial(s) in {wall:.1f} s", flush=True)

    print(f"{'gpus/trial':>10}{'trials':>8}{'wall s':>9}{'trials/h':>10}{'mean util %':>13}{'>=80% busy':>12}{'peak MiB':>10}")
    for gpus, wall, finished, s in results:
        util = (f"{s.mean_utilisation:>13.1f}{100 * s.busy_fraction:>11.0f}%{s.peak_memory_mib:>10.0f}" if s
                else f"{'n/a':>13}{'n/a':>12}{'n/a':>10}")
        print(f"{gpus:>10g}{finished:>8}{wall:>9.1f}{3600 * finished / wall:>10.0f}{util}")
    base = results[-1]
    for gpus, wall, finished, _ in results[:-1]:
        print(f"trials/hour at {gpus:g} GPU/trial vs {base[0]:g}: "
              f"{(finished / wall) / (base[2] / base[1]):.2f}x")


if __name__ == "__main__":
    main()
