"""The Ray a sweep without `--address` starts for itself: private to this machine.

- Its own new instance (`address="local"`): never a cluster some `ray start` recorded in Ray's
  `ray_current_cluster` file (a stale one made a "local" sweep hang for minutes).
- Bound to loopback. Ray rewrites a node IP of 127.0.0.1 to the machine's outward address on
  Linux (its single-machine mode, the default on macOS/Windows, is switched off there), and then
  its GCS, raylet and workers listen on every interface; with the node on 127.0.0.1 every gRPC
  server listens on loopback only. `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is Ray's switch for that
  mode; Ray reads it when it is imported, so the constant is set too when Ray is already loaded.
- Token auth as Ray 2.60 sets it up for a new local cluster (`~/.ray/auth_token`), unless the user
  turned it off explicitly with RAY_AUTH_MODE=disabled: then we say so.
"""
from __future__ import annotations

import os

LOOPBACK = "127.0.0.1"
_SINGLE_MACHINE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _single_machine_mode() -> None:
    os.environ[_SINGLE_MACHINE_SWITCH] = "0"
    import ray._private.ray_constants as ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False


def start_local_ray(log=print, **init_kwargs):
    """A new Ray on this machine only (see the module docstring); returns ray.init's context."""
    import ray
    _single_machine_mode()
    context = ray.init(address="local", _node_ip_address=LOOPBACK, **init_kwargs)
    node_ip = context.address_info["node_ip_address"]
    if node_ip != LOOPBACK:  # never pretend: a Ray that escaped loopback is an error
        ray.shutdown()
        raise RuntimeError(f"the local Ray came up on {node_ip}, not {LOOPBACK}")
    log(f"ray: local instance on {LOOPBACK}, token auth {'on' if token_auth_enabled() else 'OFF (RAY_AUTH_MODE=disabled)'}")
    return context


def token_auth_enabled() -> bool:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    return is_token_auth_enabled()
