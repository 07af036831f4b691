"""SIGTERM stops `raybench` the way Ctrl-C (SIGINT) does.

SIGTERM is what systemd, `timeout`, Kubernetes and `docker stop` send. Left to Python and Ray it
ended a sweep mid-fit (exit -6: runs left RUNNING, no resume hint, Ray agents orphaned) and a
`raybench serve` without draining. `sigterm_as_interrupt()` makes a SIGTERM run whatever SIGINT
runs at that moment: inside `Tuner.fit` Tune's own handler (the trials stop, the experiment state
is saved, raybench's logger marks the unfinished runs and the sweep raises SweepInterrupted with
the `--resume` command); elsewhere Python's, a KeyboardInterrupt (serve then shuts down,
draining its replicas). `terminated()` says whether it happened: the CLI exits 143 (128 +
SIGTERM) where Ctrl-C exits 130. The Ray that raybench starts keeps this handler
(local_ray.init_ray puts it back after ray.init, which installs its own).
"""
from __future__ import annotations

import signal
import threading

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143, as a shell reports a process ended by SIGTERM
_state = {"received": None}


def _on_sigterm(signum, frame):
    _state["received"] = signum
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # Tune's graceful stop, or signal.default_int_handler
    else:  # SIGINT ignored or default: still stop, the same way
        raise KeyboardInterrupt


def sigterm_as_interrupt() -> bool:
    """From now on SIGTERM acts as SIGINT in this process (main thread only; returns whether it
    could be installed)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def terminated() -> bool:
    """Whether a SIGTERM arrived since sigterm_as_interrupt() was installed."""
    return _state["received"] is not None
