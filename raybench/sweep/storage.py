"""Where Ray Tune keeps a sweep's state and checkpoints (a local folder, or shared storage such as
s3:// on a cluster): the root, the write check, the "latest sweep" pointer `--resume` follows, and
the check that a stored sweep can be resumed by this version of raybench."""
from __future__ import annotations

import importlib
import json
import os
import pickletools
import uuid
from dataclasses import asdict

from raybench.errors import ConfigError, TrackingError

# raybench 0.2 regrouped its modules into wings; Tune pickles the module paths of the trainable,
# the searcher and the callbacks into a sweep's state, so a sweep started by 0.1 names modules
# (raybench.trial, raybench.category_search, ...) that no longer exist.
STATE_FILES = ("tuner.pkl", "searcher-state")


def storage_root(storage: str | None) -> str:
    root = storage or os.environ.get("RAYBENCH_STORAGE") or os.path.join(os.getcwd(), ".raybench", "ray_results")
    if "://" not in root:
        root = os.path.abspath(os.path.expanduser(root))
    return root


def storage_fs(root: str):
    """(pyarrow filesystem, path) for a local folder or a URI such as s3://bucket/prefix."""
    import pyarrow.fs
    if "://" in root:
        fs, path = pyarrow.fs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    return pyarrow.fs.LocalFileSystem(), root


def check_storage(root: str) -> None:
    """Refuse to start when checkpoints could not be written."""
    try:
        fs, path = storage_fs(root)
        if fs.type_name == "local":  # object stores have no folders (s3://bucket would mean CreateBucket)
            fs.create_dir(path, recursive=True)
        probe = f"{path}/.raybench-write-test-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(probe) as fh:
            fh.write(b"ok")
        fs.delete_file(probe)
    except Exception as err:
        raise TrackingError(f"storage {root} cannot be written ({type(err).__name__}: {str(err)[:200]}); "
                            f"pass --storage PATH_OR_URI (shared storage such as s3:// on a cluster)") from None


# `--resume` without `--sweep-id` continues the last sweep of this dataset and method, named in a
# small pointer file beside the sweeps, on the same (possibly remote) storage as Ray Tune's state.
def _latest_pointer(root: str, dataset: str, method: str):
    fs, base = storage_fs(root)
    return fs, f"{base}/latest-{dataset}-{method}.json"


def read_latest_sweep_id(root: str, dataset: str, method: str) -> str | None:
    import pyarrow.fs
    fs, path = _latest_pointer(root, dataset, method)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read().decode())["sweep_id"]


def write_latest_sweep_id(root: str, spec, sweep_id: str) -> None:
    fs, path = _latest_pointer(root, spec.dataset, spec.method)
    with fs.open_output_stream(path) as fh:
        fh.write(json.dumps({"sweep_id": sweep_id, "spec": asdict(spec)}, default=str).encode())


def pickled_globals(data: bytes) -> set[tuple[str, str]]:
    """(module, name) of every class or function a pickle refers to, read without unpickling."""
    found, strings = set(), []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                found.add((module, name))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add((strings[-2], strings[-1]))
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a truncated or foreign file: what was read so far still counts
        pass
    return found


def check_resumable(path: str) -> None:
    """Refuse to resume a sweep whose stored state names raybench modules or classes this version
    does not have (the state was written by an older layout), saying why, before Tune fails
    halfway through unpickling it. The runs it logged stay in MLflow."""
    fs, base = storage_fs(path)
    import pyarrow.fs
    infos = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=False, allow_not_found=True))
    missing = set()
    for info in infos:
        name = info.path.rsplit("/", 1)[-1]
        if info.type != pyarrow.fs.FileType.File or not name.startswith(STATE_FILES):
            continue
        with fs.open_input_stream(info.path) as fh:
            refs = pickled_globals(fh.read())
        for module, attr in refs:
            if module.split(".")[0] != "raybench":
                continue
            try:
                if not hasattr(importlib.import_module(module), attr.split(".")[0]):
                    missing.add(f"{module}.{attr}")
            except ImportError:
                missing.add(f"{module}.{attr}")
    if missing:
        raise ConfigError(f"{path}: this sweep was started by an earlier raybench whose modules this version "
                          f"does not have ({', '.join(sorted(missing)[:3])}), so it cannot be resumed; its "
                          f"finished runs stay in MLflow. Start a new sweep, or finish it with the raybench "
                          f"version that started it.")
