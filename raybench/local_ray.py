"""The Ray a sweep without `--address` starts for itself: private to this machine.

- Its own new instance (`address="local"`): never a cluster some `ray start` recorded in Ray's
  `ray_current_cluster` file (a stale one made a "local" sweep hang for minutes).
- Bound to loopback. On Linux Ray rewrites a node IP of 127.0.0.1 to the machine's outward
  address (its single-machine mode, the default on macOS/Windows, is off there), and then its GCS,
  raylet and workers listen on every interface; with the node on 127.0.0.1 every server listens on
  loopback only. That mode is Ray's `ENABLE_RAY_CLUSTER` switch (env
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read when Ray is imported), so it is turned off for the
  start alone and restored after: a driver joining a real cluster later is not affected.
- Token auth as Ray 2.60 sets it up for a new local cluster (`~/.ray/auth_token`), unless the user
  turned it off explicitly with RAY_AUTH_MODE=disabled: then we say so.
"""
from __future__ import annotations

from raybench.errors import RaybenchError

LOOPBACK = "127.0.0.1"


def start_local_ray(log=print, **init_kwargs):
    """A new Ray on this machine only (see the module docstring); returns ray.init's context."""
    import ray
    import ray._private.ray_constants as ray_constants
    before, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        context = ray.init(address="local", _node_ip_address=LOOPBACK, **init_kwargs)
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
