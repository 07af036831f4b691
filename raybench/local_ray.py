"""The Ray a sweep without `--address` starts for itself: private to this machine.

- Its own new instance (`address="local"`): never a cluster some `ray start` recorded in Ray's
  `ray_current_cluster` file (a stale one made a "local" sweep hang for minutes).
- Bound to loopback. On Linux Ray rewrites a node IP of 127.0.0.1 to the machine's outward
  address (its single-machine mode, the default on macOS/Windows, is off there), and then its GCS,
  raylet and workers listen on every interface; with the node on 127.0.0.1 every server listens on
  loopback only. That mode is Ray's `ENABLE_RAY_CLUSTER` switch (env
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read when Ray is imported), so it is turned off for the
  start alone and restored after: a driver joining a real cluster later is not affected.
- The process's SIGTERM handling stays as it was: ray.init installs its own handler (sys.exit
  mid-sweep, which left runs RUNNING and Ray processes orphaned); `init_ray` puts the caller's back,
  so `raybench` stops on SIGTERM as it stops on Ctrl-C (`sigterm_as_interrupt` below).
- Token auth as Ray 2.60 sets it up for a new local cluster (`~/.ray/auth_token`), unless the user
  turned it off explicitly with RAY_AUTH_MODE=disabled: then we say so.
"""
from __future__ import annotations

import signal
import threading

from raybench.errors import RaybenchError

LOOPBACK = "127.0.0.1"
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: how a shell reports a process ended by SIGTERM
_sigterm = {"received": None}


def sigterm_as_interrupt() -> bool:
    """From now on SIGTERM (systemd, `timeout`, Kubernetes, `docker stop`) runs whatever SIGINT runs
    at that moment: inside `Tuner.fit` Tune's graceful stop (trials end, the experiment state is
    saved, the run logger marks unfinished runs, the sweep raises SweepInterrupted with the
    `--resume` command); elsewhere a KeyboardInterrupt (`raybench serve` then drains and stops).
    `terminated()` tells the CLI to exit 143 rather than Ctrl-C's 130. Main thread only; returns
    whether it was installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def _on_sigterm(signum, frame):
    _sigterm["received"] = signum
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # Tune's graceful stop, or signal.default_int_handler
    else:  # SIGINT ignored or left to the OS: stop all the same, the Python way
        raise KeyboardInterrupt


def terminated() -> bool:
    """Whether a SIGTERM arrived since sigterm_as_interrupt() was installed."""
    return _sigterm["received"] is not None


def init_ray(**init_kwargs):
    """ray.init(**init_kwargs), leaving the process's SIGTERM handler as it found it."""
    import ray
    if threading.current_thread() is not threading.main_thread():
        return ray.init(**init_kwargs)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        return ray.init(**init_kwargs)
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def start_local_ray(log=print, **init_kwargs):
    """A new Ray on this machine only (see the module docstring); returns ray.init's context."""
    import ray
    import ray._private.ray_constants as ray_constants
    before, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        context = init_ray(address="local", _node_ip_address=LOOPBACK, **init_kwargs)
    except Exception as err:  # Ray says "timed out during startup" and the like: plain words, no traceback
        raise RaybenchError(f"the local Ray did not start ({str(err).splitlines()[0][:200]}); on a busy machine, "
                            f"wait and run the same command again") from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
    node_ip = context.address_info["node_ip_address"]
    if node_ip != LOOPBACK:  # never pretend: a Ray that escaped loopback is an error
        ray.shutdown()
        raise RaybenchError(f"the local Ray came up on {node_ip}, not {LOOPBACK}: refusing to run a sweep "
                            f"reachable from the network (pass --address for a cluster)")
    log(f"ray: local instance on {LOOPBACK}, token auth {'on' if token_auth_enabled() else 'OFF (RAY_AUTH_MODE=disabled)'}")
    return context


def token_auth_enabled() -> bool:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    return is_token_auth_enabled()


def keep_replica_on_loopback() -> bool:
    """Called in a Ray Serve replica (the deployment's constructor, which Serve runs before it opens
    the replica's ports). Ray Serve 2.60 starts each replica's inter-deployment gRPC server on
    "[::]:0", every interface, whatever the node's address; on a node whose address is loopback
    (a local `raybench serve`) that server is moved to 127.0.0.1, the address the proxy and the
    handles dial. Returns whether it applied: not on a cluster node, nor if Ray no longer binds
    that way (tests/ check every port of a local serve is on loopback, so a Ray upgrade that
    changes this is caught)."""
    import ray
    try:
        import ray.serve._private.replica as replica
        original = replica.add_port_to_grpc_server
    except (ImportError, AttributeError):
        return False
    if ray.util.get_node_ip_address() != LOOPBACK:
        return False
    if getattr(original, "raybench_loopback", False):
        return True

    def add_port(server, address: str):
        if address.startswith("[::]:") or address.startswith("0.0.0.0:"):
            address = f"{LOOPBACK}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    add_port.raybench_loopback = True
    replica.add_port_to_grpc_server = add_port
    return True
