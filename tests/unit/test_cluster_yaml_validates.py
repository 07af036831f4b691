"""cluster.yaml (AWS) and cluster-onprem.yaml (fixed machines), checked offline.

1. Ray's own checks, in the order `ray up` runs them before it touches a machine
   (ray.autoscaler._private.commands.create_or_update_cluster -> _bootstrap_config):
   yaml.safe_load -> provider type known (_NODE_PROVIDERS) -> prepare_config (defaults, node
   types, min/max workers) -> provider.fillout_available_node_types_resources -> validate_config
   (ray-schema.json + cross-field checks) -> provider.bootstrap_config.
   For the local provider every step is offline, so the real _bootstrap_config runs (config cache
   off). For AWS, fillout (DescribeInstanceTypes) and bootstrap_config (IAM, key pairs, subnets,
   security groups) call the EC2 API and need credentials: the test stops after validate_config.
   cluster.yaml declares its resources, so fillout would only add memory.
2. What matters for raybench, read from the prepared config and, where it is shell, by running the
   harmless part of it (mkdir/printf/echo into a throwaway HOME) and expanding the arguments the
   head would pass: MLflow bound to a private address, storage on shared storage, GPU workers,
   raybench installed on every node.
3. Broken copies (typo'd keys, wrong types, inconsistent node types) must fail (1).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

from ray.autoscaler._private import commands
from ray.autoscaler._private.providers import _NODE_PROVIDERS
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
AWS = REPO / "cluster.yaml"
ONPREM = REPO / "cluster-onprem.yaml"
BOTH = pytest.mark.parametrize("path", [AWS, ONPREM], ids=["aws", "onprem"])


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_up_checks(config: dict) -> dict:
    """Everything `ray up` does with the config before it connects anywhere; returns the result."""
    config = copy.deepcopy(config)
    provider_type = config["provider"]["type"]
    if provider_type not in _NODE_PROVIDERS:
        raise ValueError(f"unknown provider type {provider_type!r}")
    if provider_type == "local":
        return commands._bootstrap_config(config, no_config_cache=True)
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def fails_ray_up_checks(config: dict) -> Exception | None:
    try:
        ray_up_checks(config)
    except SystemExit as e:  # defensive: the launcher's abort paths
        return e
    except Exception as e:  # jsonschema.ValidationError, ValueError, click.ClickException ...
        return e
    return None


# --- shell: run the harmless setup lines in a throwaway HOME, expand the head's arguments --------

def _site_commands(cfg: dict, head: bool) -> list[str]:
    """setup lines that only write ~/.raybench/env (no install, no ~/.bashrc)."""
    lines = cfg["head_setup_commands" if head else "worker_setup_commands"]  # merged by prepare_config
    keep = [c for c in lines
            if re.fullmatch(r"mkdir -p ~/\.raybench[\w/~. -]*", c)
            or re.fullmatch(r"(printf|echo) .*>>? ~/\.raybench/env", c.strip(), re.S)]
    assert any("RAYBENCH_NODE_IP=" in c for c in keep), "site settings line not found"
    return keep


def _bash(script: str, home: Path, extra_env: dict | None = None) -> str:
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(extra_env or {})
    p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def node_env(cfg: dict, home: Path, head: bool = True) -> dict[str, str]:
    """The variables a node's login shell exports after setup (what ray start / raybench see)."""
    home.mkdir(parents=True, exist_ok=True)
    script = "set -e\nmkdir -p ~/.raybench\n" + "\n".join(_site_commands(cfg, head))
    script += "\n. ~/.raybench/env\nenv -0\n"
    out = _bash(script, home, {"RAY_HEAD_IP": "10.0.0.10"} if not head else None)
    return dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)


def mlflow_argv(cfg: dict, home: Path, extra_env: dict | None = None) -> list[str]:
    """argv of the tracking server the head starts, with its variables expanded."""
    home.mkdir(parents=True, exist_ok=True)
    (cmd,) = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    tokens = shlex.split(cmd)
    assert tokens[:3] == ["setsid", "bash", "-c"], tokens[:3]  # own session: stoppable as a group
    inner = tokens[3]
    server = inner[inner.index("exec mlflow server"):].removeprefix("exec ")
    script = ("set -e\nmkdir -p ~/.raybench\n" + "\n".join(_site_commands(cfg, True))
              + f"\n. ~/.raybench/env\nset -- {server}\nprintf '%s\\0' \"$@\"\n")
    return _bash(script, home, extra_env).split("\0")[:-1]


def arg(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def this_hosts_first_address() -> str:
    p = subprocess.run(["bash", "-c", "hostname -I | cut -d' ' -f1"], capture_output=True,
                       text=True, timeout=10)
    return p.stdout.strip()


# --- 1. Ray's own validation ---------------------------------------------------------------------

@BOTH
def test_ray_accepts_config(path):
    cfg = ray_up_checks(load(path))
    assert cfg["head_node_type"] in cfg["available_node_types"]


def test_aws_provider_is_what_ray_up_would_load():
    cfg = load(AWS)
    assert cfg["provider"]["type"] == "aws"
    try:
        import boto3  # noqa: F401
    except ImportError:
        pytest.skip("boto3 not installed: Ray's AWS provider class cannot be imported here "
                    "(`ray up cluster.yaml` needs `pip install boto3` on the launching machine)")
    provider_cls = _NODE_PROVIDERS["aws"](cfg["provider"])
    assert provider_cls.__name__ == "AWSNodeProvider"


# --- 3. broken copies must fail ------------------------------------------------------------------

def _aws_gpu_type(cfg):
    return next(k for k in cfg["available_node_types"] if k != cfg["head_node_type"])


from click import ClickException  # noqa: E402
from jsonschema import ValidationError  # noqa: E402

# name -> (how to break a fresh copy, what `ray up` raises for it)
BROKEN_AWS = {
    "typo top-level key": (lambda c: c.__setitem__("max_worker", c.pop("max_workers")), ValidationError),
    "max_workers is a string": (lambda c: c.__setitem__("max_workers", "8"), ValidationError),
    "typo in auth": (lambda c: c["auth"].__setitem__("ssh_private_keys", c["auth"].pop("ssh_private_key")),
                     ValidationError),
    "GPU count is a string": (lambda c: c["available_node_types"][_aws_gpu_type(c)]["resources"]
                              .__setitem__("GPU", "1"), ValidationError),
    "negative GPU count": (lambda c: c["available_node_types"][_aws_gpu_type(c)]["resources"]
                           .__setitem__("GPU", -1), ValidationError),
    "node type without node_config": (lambda c: c["available_node_types"][_aws_gpu_type(c)]
                                      .pop("node_config"), ValidationError),
    "head type not defined": (lambda c: c.__setitem__("head_node_type", "head.gpu"), ValueError),
    "min_workers above global max": (lambda c: c["available_node_types"][_aws_gpu_type(c)]
                                     .__setitem__("min_workers", 99), ValueError),
    "setup_commands not a list": (lambda c: c.__setitem__("setup_commands", "pip install raybench"),
                                  TypeError),  # prepare_config cannot merge it
    "provider without type": (lambda c: c["provider"].pop("type"), KeyError),
}

BROKEN_ONPREM = {
    "typo top-level key": (lambda c: c.__setitem__("head_start_ray_command", c.pop("head_start_ray_commands")),
                           ValidationError),
    "worker_ips is a string": (lambda c: c["provider"].__setitem__("worker_ips", "10.0.0.11,10.0.0.12"),
                               ValidationError),
    "typo in auth": (lambda c: c["auth"].__setitem__("ssh_users", c["auth"].pop("ssh_user")), ValidationError),
    "head_ip missing": (lambda c: c["provider"].pop("head_ip"), ClickException),
    "node types on a local cluster": (lambda c: c.__setitem__(
        "available_node_types", {"gpu": {"resources": {"GPU": 1}, "node_config": {}}}), ClickException),
}


@pytest.mark.parametrize("path,name", [(AWS, n) for n in sorted(BROKEN_AWS)] + [(ONPREM, n) for n in sorted(BROKEN_ONPREM)],
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_broken_copy_fails(path, name):
    cfg = load(path)
    breaker, expected = (BROKEN_AWS if path == AWS else BROKEN_ONPREM)[name]
    breaker(cfg)
    err = fails_ray_up_checks(cfg)
    assert isinstance(err, expected), f"'{name}': expected {expected.__name__}, got {err!r}"


def test_broken_file_on_disk_fails(tmp_path):
    """The YAML text itself: a misspelt key in a copy of the file is caught."""
    text = AWS.read_text().replace("\nidle_timeout_minutes:", "\nidle_timeout_minutess:")
    assert "idle_timeout_minutess" in text
    assert isinstance(fails_ray_up_checks(yaml.safe_load(text)), ValidationError)
    text = re.sub(r"(?m)^  worker_ips: \[([^,\]]+)[^\]]*\]", r"  worker_ips: \1", ONPREM.read_text())
    assert re.search(r"(?m)^  worker_ips: [^\[]", text)
    assert isinstance(fails_ray_up_checks(yaml.safe_load(text)), ValidationError)


# --- 2. what matters for raybench ----------------------------------------------------------------

@BOTH
def test_mlflow_server_binds_the_private_address(path, tmp_path):
    cfg = prepare_config(load(path))
    argv = mlflow_argv(cfg, tmp_path)
    host = arg(argv, "--host")
    assert host not in ("", "0.0.0.0", "::", "[::]", "*"), argv
    # the address comes from the node itself (`hostname -I`: the private interface) unless pinned
    expected = this_hosts_first_address()
    if expected:
        assert host == expected
        assert ipaddress.ip_address(host).is_private, host
    pinned = mlflow_argv(cfg, tmp_path / "pinned", {"RAYBENCH_NODE_IP": "10.1.2.3"})
    assert arg(pinned, "--host") == "10.1.2.3"
    # nothing else in the start commands opens Ray or MLflow to every interface
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        assert "0.0.0.0" not in cmd and "--dashboard-host" not in cmd, cmd


@BOTH
def test_tracking_uri_points_every_node_at_the_head(path, tmp_path):
    cfg = prepare_config(load(path))
    head = node_env(cfg, tmp_path / "head")
    argv = mlflow_argv(cfg, tmp_path / "head")
    assert head["MLFLOW_TRACKING_URI"] == f"http://{arg(argv, '--host')}:{arg(argv, '--port')}"
    worker = node_env(cfg, tmp_path / "worker", head=False)
    assert worker["MLFLOW_TRACKING_URI"] == f"http://10.0.0.10:{arg(argv, '--port')}"  # $RAY_HEAD_IP
    # the head waits for the server before starting Ray (a dead server fails `ray up`)
    cmds = cfg["head_start_ray_commands"]
    i_mlflow = next(i for i, c in enumerate(cmds) if "mlflow server" in c)
    i_health = next(i for i, c in enumerate(cmds) if "/health" in c)
    i_ray = next(i for i, c in enumerate(cmds) if "ray start" in c)
    assert i_mlflow < i_health < i_ray


def test_aws_storage_is_s3(tmp_path):
    cfg = prepare_config(load(AWS))
    env = node_env(cfg, tmp_path / "h")
    assert re.fullmatch(r"s3://[a-z0-9.-]+/\S+", env["RAYBENCH_STORAGE"]), env["RAYBENCH_STORAGE"]
    assert node_env(cfg, tmp_path / "w", head=False)["RAYBENCH_STORAGE"] == env["RAYBENCH_STORAGE"]
    argv = mlflow_argv(cfg, tmp_path / "h")
    assert arg(argv, "--artifacts-destination").startswith("s3://")
    assert arg(argv, "--backend-store-uri").startswith("sqlite:////")  # absolute path on the head


def test_onprem_storage_is_the_nfs_share(tmp_path):
    cfg = prepare_config(load(ONPREM))
    env = node_env(cfg, tmp_path / "h")
    shared = Path(env["RAYBENCH_SHARED"])
    assert shared.is_absolute() and not str(shared).startswith(("/tmp", str(tmp_path)))
    assert Path(env["RAYBENCH_STORAGE"]).is_relative_to(shared)
    argv = mlflow_argv(cfg, tmp_path / "h")
    assert arg(argv, "--artifacts-destination") == f"file://{shared}/mlflow-artifacts"
    # sqlite stays on the head's own disk (sqlite locking over NFS is unreliable)
    db = arg(argv, "--backend-store-uri").removeprefix("sqlite:///")
    assert db.startswith(str(tmp_path / "h")) and not db.startswith(str(shared))
    # both sides refuse to start without the share mounted
    assert any('test -d "$RAYBENCH_SHARED"' in c for c in cfg["head_setup_commands"])
    assert any('test -d "$RAYBENCH_STORAGE"' in c for c in cfg["worker_setup_commands"])


def test_aws_gpu_workers_are_spot_and_scale_to_zero():
    cfg = ray_up_checks(load(AWS))
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials would be scheduled on the head"
    gpu_types = {k: v for k, v in cfg["available_node_types"].items()
                 if k != cfg["head_node_type"] and v["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker type declares GPU resources"
    for name, t in gpu_types.items():
        assert t["min_workers"] == 0 and 0 < t["max_workers"] <= cfg["max_workers"], name
        nc = t["node_config"]
        assert re.match(r"(g4dn|g5|g6|g6e|p3|p4d|p5)\.", nc["InstanceType"]), nc["InstanceType"]
        assert nc["InstanceMarketOptions"]["MarketType"] == "spot"
        assert "IamInstanceProfile" in nc, "workers write checkpoints to S3: they need a profile"
    assert cfg["provider"].get("cache_stopped_nodes") is False  # spot nodes cannot be stopped


@BOTH
def test_every_node_installs_raybench_from_the_working_copy(path):
    cfg = prepare_config(load(path))
    mounts = cfg["file_mounts"]
    for remote, local in mounts.items():
        if remote.startswith("~/raybench"):
            assert not Path(local).is_absolute() and ".." not in Path(local).parts, local
            assert (REPO / local).exists(), f"file_mounts source {local} is not in the working copy"
    pyproject = (REPO / "pyproject.toml").read_text()
    needed = {"pyproject.toml", "raybench", "search_spaces"}
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    if readme:
        needed.add(readme.group(1))  # setuptools refuses to build without it
    mounted = {remote.removeprefix("~/raybench/") for remote in mounts}
    assert needed <= mounted, f"not mounted: {needed - mounted}"
    # merged head and worker setup both pip-install the mounted copy, with the launcher's Ray
    for key in ("head_setup_commands", "worker_setup_commands"):
        pip = [c for c in cfg[key] if "pip install" in c and c.rstrip().endswith(" ~/raybench")]
        assert pip, f"{key} does not install raybench"
        assert f"=={ray.__version__}" in pip[0], f"nodes must run Ray {ray.__version__}: {pip[0]}"
        assert "ray[default" in pip[0]  # the autoscaler and dashboard need ray[default]
        # editable: raybench.sweep.search_space looks for search_spaces/ beside the package directory,
        # which only holds for the synced working copy, not for a copy in site-packages
        assert pip[0].rstrip().endswith(" -e ~/raybench"), pip[0]
        assert any("raybench-venv/bin/activate" in c and ".bashrc" in c for c in cfg[key])


@BOTH
def test_ray_token_auth_on_every_node(path, tmp_path):
    cfg = prepare_config(load(path))
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert node_env(cfg, tmp_path / "h")["RAY_AUTH_MODE"] == "token"
    assert node_env(cfg, tmp_path / "w", head=False)["RAY_AUTH_MODE"] == "token"


@BOTH
def test_ray_start_uses_the_node_address(path):
    cfg = prepare_config(load(path))
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in cfg[key] if "ray start" in c]
        assert '--node-ip-address="$RAYBENCH_NODE_IP"' in start, start
    (worker,) = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    port = re.search(r"--port=(\d+)", next(c for c in cfg["head_start_ray_commands"] if "ray start" in c))
    assert f"--address=$RAY_HEAD_IP:{port.group(1)}" in worker


def test_onprem_lists_private_machines():
    prov = load(ONPREM)["provider"]
    for ip in [prov["head_ip"], *prov["worker_ips"]]:
        assert ipaddress.ip_address(ip).is_private, ip
