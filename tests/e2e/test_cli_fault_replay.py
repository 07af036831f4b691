"""Issue 12's "done when": every fault replayed through the public CLI (a subprocess, as a user
runs it) on one tiny generated dataset whose category name holds a quote. Each fault must give
its clear message and exit status; no run is left RUNNING; the Ray a local sweep starts listens
on loopback only, with token auth on (the test suite's RAY_AUTH_MODE=disabled is removed for
these subprocesses: what is tested is what users get)."""
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_mvtec_category, save_png
from raybench import tracking
from raybench.sweep.run_logger import INTERRUPTED

pytestmark = pytest.mark.slow

CATEGORY = "o'ring"  # a quote: MLflow filters must still find its runs
# other libraries' lines a user should not see without -v: MLflow's INFO lines, Ray's, warnings with
# site-packages paths, artifact-download progress bars, ANSI codes in a pipe, Ray's token-auth notice
LIBRARY_NOISE = re.compile(r"INFO mlflow|INFO worker\.py|INFO alembic|Warning:|site-packages|Downloading artifacts|"
                           r"\x1b\[|Token authentication is enabled|Tuner\.restore")
SMOKE = ["--method", "patchcore", "--budget", "smoke", "--weights", "random", "--set", "batch_size=4",
         # a tiny category (3 good, 3 bad): the faults are the point here, not validation that can rank
         "--val-mode", "real", "--val-normals", "0", "--accept-weak-validation"]


@pytest.fixture(scope="module")
def world():
    """One short temp root (Ray's socket paths must stay short), a dataset, a clean environment
    whose TMPDIR holds a stale `ray_current_cluster` pointing at no cluster at all."""
    root = Path(tempfile.mkdtemp(prefix="rbf"))
    data = root / "data"
    make_mvtec_category(data, CATEGORY, n_train=6, n_good=3, n_bad=3, size=(40, 48))
    stale = root / "tmp" / "ray"
    stale.mkdir(parents=True)
    (stale / "ray_current_cluster").write_text("127.0.0.1:1")  # a `ray start` long gone
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env.update(TMPDIR=str(root / "tmp"), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    yield root, data, env
    shutil.rmtree(root, ignore_errors=True)


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "raybench.cli", *args]


def sweep_args(root: Path, data: Path, *extra) -> list[str]:
    return cli("sweep", "folder", "--data-root", str(data), "--categories", CATEGORY,
               "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--storage", str(root / "ray"), *SMOKE, *extra)


def run(cmd, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def runs(root: Path, sweep_id: str | None = None) -> list:
    c = tracking.client(f"sqlite:///{root / 'mlflow.db'}")
    exp = c.get_experiment_by_name("raybench-folder")
    if exp is None:
        return []
    return tracking.search_runs(c, [exp.experiment_id], {"sweep_id": sweep_id} if sweep_id else {})


def listening(pid: int) -> set[tuple[str, str]]:
    """(process name, ip) of every listening inet socket of `pid` and its descendants."""
    import ray  # noqa: F401  (puts Ray's bundled psutil on the path)
    import psutil
    out = set()
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for proc in procs:
        try:
            out |= {(proc.name(), c.laddr.ip) for c in proc.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    return out


def loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")


def test_bad_input_stops_the_cli_within_seconds_before_anything_starts(world):
    root, data, env = world
    bad_space = root / "neg.yaml"
    bad_space.write_text("method: patchcore\nparams:\n  coreset_ratio: {type: float, low: -0.1, high: 0.1}\n")
    odd = root / "odd"
    base = make_mvtec_category(odd, "part")
    save_png(base / "ground_truth" / "scratch" / "000_mask.png", np.zeros((10, 10), np.uint8))
    (root / "dbdir" / "mlflow.db").mkdir(parents=True)
    cases = [  # (arguments, exit status, what stderr says)
        (sweep_args(root, data, "--trials", "-1"), 2, "--trials: must be at least 1, got -1"),
        (sweep_args(root, data, "--trials", "0"), 2, "--trials: must be at least 1, got 0"),
        (sweep_args(root, data, "--set", "coreset_ratio=-1"), 2,
         "raybench: error: coreset_ratio: -1.0 is out of range (must be in (0, 1])"),
        (sweep_args(root, data, "--set", "batch_size=0"), 2, "raybench: error: batch_size: 0 is out of range"),
        (sweep_args(root, data, "--search-space", str(bad_space)), 2, "coreset_ratio.low: -0.1 is out of range"),
        (sweep_args(root, data, "--set", "coreset_ratio"), 2, "raybench: error: --set expects KEY=VALUE"),
        (sweep_args(root, odd, "--categories", "part"), 2, "000_mask.png: mask is 10x10 px but its image"),
        (sweep_args(root, data, "--tracking-uri", f"sqlite:///{root / 'dbdir' / 'mlflow.db'}"), 2,
         "cannot be created or opened as a sqlite file"),
        # an existing, empty store and a real image (a missing store is refused earlier, exit 2)
        (cli("predict", "--category", "nonexistent", "--tracking-uri", f"sqlite:///{root / 'empty.db'}",
             str(data / CATEGORY / "test" / "good" / "000.png")),
         4, "raybench: error: no finished run with a checkpoint for category 'nonexistent'"),
    ]
    tracking.check_tracking(f"sqlite:///{root / 'empty.db'}")
    for args, code, message in cases:
        start = time.monotonic()
        done = run(args, env, timeout=120)
        took = time.monotonic() - start
        assert done.returncode == code, (args, done.stderr[-2000:])
        assert message in done.stderr, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        assert took < 60, (args, took)
    assert not (root / "ray").exists()  # no sweep got as far as its storage


def test_a_local_sweep_is_private_and_predict_agrees_with_the_logged_verdicts(world):
    root, data, env = world
    # --kind: the user says what the category is (here only the plumbing; synthesis is unit-tested)
    proc = subprocess.Popen(sweep_args(root, data, "--trials", "2", "--sweep-id", "ok", "--kind", f"{CATEGORY}=texture"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = set()
    while proc.poll() is None:  # sample the sockets of the Ray it started while it runs
        seen |= listening(proc.pid)
        time.sleep(0.5)
    out = proc.stdout.read()
    assert proc.returncode == 0, out[-3000:]
    assert "ray: local instance on 127.0.0.1, token auth on" in out  # not the stale cluster, auth on
    # issue 21: raybench's own lines only (no -v), and it ends saying where to look
    assert not [line for line in out.splitlines() if LIBRARY_NOISE.search(line)], out[-5000:]
    assert "raybench ui --tracking-uri" in out and "/#/compare-runs?runs=" in out and "raybench report folder" in out
    assert "optuna-dashboard sqlite:///" in out and (root / "optuna.db").is_file()
    names = {name for name, _ in seen}
    assert {"gcs_server", "raylet"} <= names, seen  # the sampling did see Ray's servers
    assert all(loopback(ip) for _, ip in seen), [s for s in seen if not loopback(s[1])]
    finished = runs(root, "ok")
    assert len(finished) == 2 and {r.info.status for r in finished} == {"FINISHED"}

    # predict loads the run ranked first on validation; its verdicts (validation's F1-max cuts) on
    # that run's validation images give exactly the validation F1 it logged
    from raybench.data import load_dataset
    from raybench.evaluation.splits import make_split
    uri = f"sqlite:///{root / 'mlflow.db'}"
    best = [r for r in tracking.finished_runs(uri, "folder", CATEGORY) if r.data.tags.get("checkpoint") == "yes"][0]
    assert best.data.tags["sweep_id"] == "ok" and best.data.metrics["val_image_auroc"] == max(
        r.data.metrics["val_image_auroc"] for r in finished)
    (cat,) = load_dataset("folder", data, [CATEGORY])
    split = make_split(cat, "real", 0.3, 0, val_normals=0.0)  # SMOKE's split: real, 0.3, seed 0, no held-out normals
    assert split.test_split_hash == best.data.tags["test_split_hash"]
    done = run(cli("predict", "--category", CATEGORY, "--tracking-uri", uri,
                   *[str(s.path) for s in split.validation]), env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [line for line in done.stderr.splitlines() if LIBRARY_NOISE.search(line)], done.stderr[-3000:]
    rows = [line.split("\t") for line in done.stdout.splitlines() if "\t" in line]
    assert len(rows) == len(split.validation)
    flagged = np.array([v == "anomalous" for _, v, _ in rows])
    truth = np.array(["scratch" in p for _, _, p in rows])
    tp = (flagged & truth).sum()
    f1 = 2 * tp / (flagged.sum() + truth.sum())
    assert f1 == pytest.approx(best.data.metrics["val_f1_max"], abs=1e-6)


def test_failed_trials_and_an_interrupt_set_the_exit_status(world):
    root, data, env = world
    # every trial fails (an unknown layer the search samples: caught only when the trial builds the
    # model; a `--set layers=[layer9]` is refused by the sweep's pre-flight build, exit 2): exit 3,
    # the error tag without colour codes, reported once (never retried)
    layer9 = root / "layer9.yaml"
    layer9.write_text("method: patchcore\nparams:\n  layers: {type: categorical, choices: [[layer9]]}\nfixed: {}\n")
    # (each study's first trial is the method's default configuration, which builds: the second samples layer9)
    done = run(sweep_args(root, data, "--trials", "2", "--sweep-id", "bad", "--search-space", str(layer9)), env)
    assert done.returncode == 3, (done.stdout + done.stderr)[-3000:]
    assert "1 of 2 trial(s) FAILED" in done.stderr
    (failed,) = [r for r in runs(root, "bad") if r.info.status == "FAILED"]
    assert {r.info.status for r in runs(root, "bad")} == {"FAILED", "FINISHED"}
    assert "layer9" in failed.data.tags["error"] and "\x1b[" not in failed.data.tags["error"]
    assert len(re.findall(r"FAILED: ", done.stdout)) == 1

    # Ctrl-C after the first trial: exit 130 with raybench's own hint; nothing left RUNNING
    sweep_id = "o'clock"  # a quote in the sweep id, too
    args = sweep_args(root, data, "--trials", "3", "--max-concurrent", "1", "--sweep-id", sweep_id)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if any(r.info.status == "FINISHED" for r in runs(root, sweep_id)):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out + err)[-3000:]
    assert f"--resume --sweep-id {shlex.quote(sweep_id)}" in err and "Tuner.restore" not in out + err
    before = runs(root, sweep_id)
    assert "RUNNING" not in {r.info.status for r in before}
    assert all(r.data.tags.get("error") == INTERRUPTED for r in before if r.info.status == "FAILED")
    n_before = sum(r.info.status == "FINISHED" for r in before)
    assert 1 <= n_before < 3

    # --resume finishes it: exit 0, the progress counter goes on without gaps, one run per trial
    done = run(args + ["--resume"], env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    numbers = [int(n) for n in re.findall(r"^\[(\d+)/3\]", done.stdout, re.M)]
    assert numbers == list(range(n_before + 1, 4)), done.stdout[-3000:]
    after = runs(root, sweep_id)
    assert len(after) == 3 and {r.info.status for r in after} == {"FINISHED"}
    assert not any("error" in r.data.tags for r in after)
