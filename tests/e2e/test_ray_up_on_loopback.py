"""End-to-end: `ray up` of cluster-onprem.yaml against an sshd on 127.0.0.1, a Ray job through
`ray submit`, then `ray down`.

What is real: Ray's cluster launcher (`ray up -y`, `ray submit`, `ray down -y` as subprocesses),
ssh + rsync to the "head", the file mounts, and the YAML's own head_setup_commands and
head_start_ray_commands -- MLflow tracking server and `ray start --head` -- run verbatim, except:

* site settings (the printf that writes ~/.raybench/env) and the venv/pip install lines are
  replaced: the head is this machine, raybench is already installed in the running interpreter's
  environment, and every path, port and address is a throwaway one on loopback;
* `ray start` gets free ports, a small object store and one CPU appended (click keeps the last
  value of a repeated option), so it cannot collide with other Ray instances on this machine;
* `ray stop` is dropped from the start commands and, for `ray down`, answered by a shim that stops
  only the processes this test started. The real `ray stop` kills every Ray process on the
  machine -- fine on a dedicated node, not on a shared CI box.

Isolation: sshd runs with its own config (ListenAddress 127.0.0.1, a free port, its own host key,
AuthorizedKeysFile in a temp dir, HOME of the session set to a temp dir), so nothing in the real
home directory is read or written on the "remote" side. Ray's launcher has no ssh-port option;
`auth.ssh_proxy_command` (part of Ray's schema) carries the connection to the port instead. Only
127.0.0.1 is ever contacted, and every socket the run listens on is checked to be on loopback;
usage stats are off. Everything started here -- sshd, the MLflow server, the Ray head --
is stopped in the fixture's finally block, by pid, even when the test fails.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from net import free_port

REPO = Path(__file__).resolve().parents[2]
ONPREM = REPO / "cluster-onprem.yaml"
VENV_BIN = Path(sys.executable).parent
RAY_CLI = VENV_BIN / "ray"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# The loopback "head". Ray binds some servers (the object manager's gRPC server among them) to
# localhost only when the node IP is exactly 127.0.0.1, and to every interface otherwise -- also
# for 127.0.0.2. But `ray start --node-ip-address=127.0.0.1` swaps 127.0.0.1 for the machine's
# routable address unless Ray's multi-node mode is off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, its
# laptop switch), so the test's site settings turn it off: single node, everything on 127.0.0.1.
HEAD_IP = "127.0.0.1"
# CPUs the loopback head offers Ray. A sweep whose trials start Ray Train workers needs more than
# one trial's worth (trial function + workers), e.g. 2 with resources_per_worker={"CPU": 0.5}.
HEAD_NUM_CPUS = 2  # a trial plus the Tune driver's bookkeeping

pytestmark = pytest.mark.slow


def _missing_tools() -> list[str]:
    missing = []
    if not os.access(SSHD, os.X_OK):
        missing.append("sshd (apt-get install openssh-server, or run tests/cluster_setup.sh)")
    for tool in ("ssh", "ssh-keygen", "rsync"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not RAY_CLI.exists():
        missing.append(f"ray CLI next to {sys.executable}")
    return missing


_MISSING = _missing_tools()
if _MISSING:
    pytestmark = [
        pytest.mark.slow,
        pytest.mark.skip(reason="loopback ray up needs: " + ", ".join(_MISSING)),
    ]



def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HEAD_IP, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


# --- processes started by this test: found by a tag in their environment -------------------------

def _tagged_pids(tag: str) -> list[int]:
    """Pids whose initial environment holds RAYBENCH_E2E_TAG=<tag> (set only by this test)."""
    needle = f"RAYBENCH_E2E_TAG={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry))
    return pids


def _kill_pids(pids: list[int], grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive or sig == signal.SIGKILL:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
            if not alive:
                return
            time.sleep(0.2)
        pids = alive


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# Stand-in for `ray stop` on the loopback "head" (used by `ray down`): stops Ray processes carrying
# this run's tag, leaves the MLflow server (its own process group, like on a real head) running.
STOP_SHIM = textwrap.dedent(
    """\
    import os, signal, sys, time
    tag = ("RAYBENCH_E2E_TAG=" + sys.argv[1]).encode()
    pidfile = sys.argv[2]
    mlflow_pgid = int(open(pidfile).read().strip()) if os.path.exists(pidfile) else -1
    me, skip = os.getpid(), set()
    p = me
    while p > 1:  # never stop our own ancestors (the ssh session running this)
        skip.add(p)
        p = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
    victims = []
    for e in os.listdir("/proc"):
        if not e.isdigit() or int(e) in skip:
            continue
        try:
            if tag in open(f"/proc/{e}/environ", "rb").read().split(b"\\0") and os.getpgid(int(e)) != mlflow_pgid:
                victims.append(int(e))
        except OSError:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for v in victims:
            try:
                os.kill(v, sig)
            except OSError:
                pass
        time.sleep(3)
    print(f"stopped {len(victims)} tagged processes")
    """
)

# ssh ProxyCommand: pipes stdin/stdout to the test's sshd (address and port fixed by the test).
RELAY = textwrap.dedent(
    """\
    import os, select, socket, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    fds = [0, s]
    while fds:
        for r in select.select(fds, [], [])[0]:
            if r == 0:
                data = os.read(0, 65536)
                if data:
                    s.sendall(data)
                else:
                    s.shutdown(socket.SHUT_WR)
                    fds.remove(0)
            else:
                data = s.recv(65536)
                if not data:
                    sys.exit(0)
                os.write(1, data)
    """
)

JOB = textwrap.dedent(
    """\
    import json, os, socket, urllib.request
    import ray

    ray.init(address="auto")

    @ray.remote
    def square(x):
        return x * x, socket.gethostname()

    results = ray.get([square.remote(i) for i in range(8)])
    uri = os.environ["MLFLOW_TRACKING_URI"]
    health = urllib.request.urlopen(uri + "/health", timeout=10).read().decode().strip()
    nodes = ray.nodes()
    ray.shutdown()

    # a smoke sweep through the cluster, the way a user runs it on the head node
    import subprocess, sys
    sweep = subprocess.run([sys.executable, "-m", "raybench.cli", "sweep", "demo", "--address", "auto",
                            "--method", "patchcore", "--categories", "stripes", "--trials", "1", "--budget", "smoke",
                            "--final-seeds", "0", "--val-mode", "real"],
                           capture_output=True, text=True, timeout=600)
    print(sweep.stdout[-3000:], sweep.stderr[-3000:])
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("raybench-demo")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    print("RAYBENCH_E2E_RESULT " + json.dumps({
        "sum": sum(r[0] for r in results),
        "nodes": len(nodes),
        "node_ips": sorted(n["NodeManagerAddress"] for n in nodes),
        "mlflow_uri": uri,
        "mlflow_health": health,
        "storage": os.environ.get("RAYBENCH_STORAGE"),
        "auth_mode": os.environ.get("RAY_AUTH_MODE"),
        "sweep_rc": sweep.returncode,
        "runs": sorted(r.info.status for r in runs),
    }))
    """
)


def _run(cmd, *, env, cwd, timeout, log: Path):
    """Run a launcher command in its own process group, append its output to log, return
    (rc, output). On timeout the whole group (the launcher and its ssh/rsync children) is killed."""
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=30)
        out, rc = (out or "") + f"\n[timed out after {timeout}s]", 124
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd))}\n{out}\n[rc={rc}]\n")
    return rc, out


def _derive_config(base: Path, *, user: str, key: Path, ssh_port: int, tag: str,
                   ports: dict[str, int], token: Path) -> dict:
    """cluster-onprem.yaml, pointed at the loopback sshd (see module docstring for what changes)."""
    cfg = yaml.safe_load(ONPREM.read_text())
    shared = base / "shared"
    cfg["cluster_name"] = f"rbe2e-{tag}"  # the fixture's cleanup derives paths from this name
    cfg["provider"] = {"type": "local", "head_ip": HEAD_IP, "worker_ips": []}
    cfg["auth"] = {
        "ssh_user": user,
        "ssh_private_key": str(key),
        "ssh_proxy_command": f"{sys.executable} {base / 'relay.py'} {HEAD_IP} {ssh_port}",
    }
    # The YAML's mounts, relative to the repository root like a real `ray up`; the auth token is
    # this run's. A source not in the working copy yet is left out (the static tests name it).
    mounts = {}
    for remote, local in cfg["file_mounts"].items():
        if remote == "~/.ray/auth_token":
            mounts[remote] = str(token)
        elif (REPO / local).exists():
            mounts[remote] = local
    cfg["file_mounts"] = mounts

    # setup_commands: keep the YAML's own lines except the site settings and the install lines.
    site = [
        f"export RAYBENCH_SHARED={shared}",
        "export RAYBENCH_STORAGE=$RAYBENCH_SHARED/ray_results",
        f"export RAYBENCH_MLFLOW_PORT={ports['mlflow']}",
        f"export RAYBENCH_NODE_IP={HEAD_IP}",
        "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0",  # see HEAD_IP
        "export RAY_AUTH_MODE=token",
        f"export RAY_TMPDIR={base / 'rt'}",
        "export RAY_USAGE_STATS_ENABLED=0",
        f"export RAYBENCH_E2E_TAG={tag}",
    ]
    setup, replaced_site, replaced_install = [], 0, 0
    for cmd in cfg["setup_commands"]:
        if "RAYBENCH_NODE_IP=" in cmd and "printf" in cmd:
            setup.append("printf '%s\\n' " + " ".join(f"'{line}'" for line in site) + " > ~/.raybench/env")
            replaced_site += 1
        elif "pip install" in cmd or "-m venv" in cmd:
            replaced_install += 1
        else:
            setup.append(cmd)
    assert replaced_site == 1 and replaced_install >= 1, cfg["setup_commands"]
    # The "venv" on the loopback head: the shim dir and this interpreter's environment on PATH.
    setup.insert(-1, f"mkdir -p ~/raybench-venv/bin && printf '%s\\n' "
                     f"'export PATH={base / 'bin'}:{VENV_BIN}:$PATH' > ~/raybench-venv/bin/activate")
    cfg["setup_commands"] = setup

    extra = (f" --port={ports['gcs']} --object-manager-port={ports['om']}"
             f" --node-manager-port={ports['nm']}"
             f" --dashboard-port={ports['dash']} --dashboard-agent-listen-port={ports['agent']}"
             f" --dashboard-agent-grpc-port={ports['agent_grpc']} --metrics-export-port={ports['metrics']}"
             f" --runtime-env-agent-port={ports['renv']} --min-worker-port={ports['wmin']}"
             f" --max-worker-port={ports['wmin'] + 40} --include-dashboard=false"
             f" --num-cpus={HEAD_NUM_CPUS} --object-store-memory=100000000 --disable-usage-stats")
    start = []
    for cmd in cfg["head_start_ray_commands"]:
        if cmd.strip() == "ray stop":
            continue
        if "ray start" in cmd:
            cmd = cmd.rstrip() + extra
        start.append(cmd)
    assert sum("ray start" in c for c in start) == 1 and any("mlflow server" in c for c in start)
    cfg["head_start_ray_commands"] = start
    return cfg


@pytest.fixture
def loopback_head():
    """sshd on 127.0.0.1:<free port> for the current user, session HOME in a temp dir."""
    base = Path(tempfile.mkdtemp(prefix="rbe2e-", dir="/tmp"))  # short: Ray's socket paths
    tag = secrets.token_hex(6)
    user = getpass.getuser()
    for d in ("home", "shared", "rt", "bin", "tmp"):
        (base / d).mkdir()
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run(keygen + ["-f", str(base / "host_key")], check=True, timeout=30)
    subprocess.run(keygen + ["-f", str(base / "id_ed25519")], check=True, timeout=30)
    (base / "authorized_keys").write_text((base / "id_ed25519.pub").read_text())
    os.chmod(base / "authorized_keys", 0o600)
    (base / "relay.py").write_text(RELAY)
    (base / "stop_shim.py").write_text(STOP_SHIM)
    (base / "bin" / "ray").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = stop ]; then exec {sys.executable} {base / "stop_shim.py"} {tag} '
        f'"$HOME/mlflow/server.pid"; fi\n'
        f'exec {RAY_CLI} "$@"\n'
    )
    os.chmod(base / "bin" / "ray", 0o755)
    (base / "token").write_text(secrets.token_hex(32))
    os.chmod(base / "token", 0o600)

    port = free_port(HEAD_IP)
    (base / "sshd_config").write_text(textwrap.dedent(f"""\
        ListenAddress {HEAD_IP}
        Port {port}
        HostKey {base / 'host_key'}
        PidFile {base / 'sshd.pid'}
        AuthorizedKeysFile {base / 'authorized_keys'}
        AllowUsers {user}
        PermitRootLogin prohibit-password
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        X11Forwarding no
        AllowTcpForwarding local
        MaxStartups 64
        MaxSessions 64
        SetEnv HOME={base / 'home'}
        """))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(base / "sshd_config")],
                            stdout=open(base / "sshd.log", "w"), stderr=subprocess.STDOUT)
    try:
        if not _wait_port(port, 15):
            pytest.fail(f"sshd did not listen on {HEAD_IP}:{port}:\n" + (base / "sshd.log").read_text())
        yield {"base": base, "tag": tag, "user": user, "ssh_port": port}
    finally:
        _kill_pids(_tagged_pids(tag))  # Ray head, MLflow, anything left by the launcher
        deadline = time.monotonic() + 20  # killed processes take a moment to be reaped
        while True:
            leftover = [p for p in _tagged_pids(tag) if not _is_zombie(p)]
            if not leftover or time.monotonic() > deadline:
                break
            _kill_pids(leftover)
            time.sleep(0.5)
        sshd.terminate()
        try:
            sshd.wait(10)
        except subprocess.TimeoutExpired:
            sshd.kill()
            sshd.wait(10)
        if os.environ.get("RAYBENCH_E2E_KEEP"):
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
        _remove_ssh_control_dir(f"rbe2e-{tag}")
        assert not leftover, f"processes of this run survived SIGKILL: {leftover}"


def _remove_ssh_control_dir(cluster_name: str) -> None:
    """Ray's launcher keeps ssh ControlPath sockets in /tmp/ray_ssh_<user hash>/<cluster hash>
    (see SSHCommandRunner); drop this run's folder, and the parent if nothing else is in it."""
    from ray.autoscaler._private.command_runner import HASH_MAX_LENGTH

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:HASH_MAX_LENGTH]

    parent = Path("/tmp") / f"ray_ssh_{h(getpass.getuser())}"
    shutil.rmtree(parent / h(cluster_name), ignore_errors=True)
    try:
        parent.rmdir()
    except OSError:
        pass


def test_ray_up_onprem_on_loopback(loopback_head):
    base, tag = loopback_head["base"], loopback_head["tag"]
    names = ("gcs", "om", "nm", "dash", "agent", "agent_grpc", "metrics", "renv", "mlflow")
    ports = {n: free_port(HEAD_IP) for n in names}
    ports["wmin"] = 20000 + secrets.randbelow(20000)
    cfg = _derive_config(base, user=loopback_head["user"], key=base / "id_ed25519",
                         ssh_port=loopback_head["ssh_port"], tag=tag, ports=ports,
                         token=base / "token")
    cfg_path = base / "cluster.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (base / "job.py").write_text(JOB)
    log = base / "launcher.log"

    # The launcher's own temp files (state/lock of the local provider, config cache) stay in base.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env.update(RAY_TMPDIR=str(base / "rt"), TMPDIR=str(base / "tmp"), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}")

    t0, t_up, t_job = time.monotonic(), float("nan"), float("nan")
    try:
        rc, out = _run([RAY_CLI, "up", "-y", "--no-config-cache", str(cfg_path)],
                       env=env, cwd=REPO, timeout=300, log=log)
        assert rc == 0, f"ray up failed (rc={rc}):\n{out[-6000:]}"
        t_up = time.monotonic() - t0

        rc, out = _run([RAY_CLI, "submit", str(cfg_path), str(base / "job.py")],
                       env=env, cwd=REPO, timeout=600, log=log)
        assert rc == 0, f"ray submit failed (rc={rc}):\n{out[-6000:]}"
        line = next((l for l in out.splitlines() if l.startswith("RAYBENCH_E2E_RESULT ")), None)
        assert line, out[-6000:]
        result = json.loads(line.split(" ", 1)[1])
        assert result["sum"] == sum(i * i for i in range(8))
        assert result["nodes"] == 1 and result["node_ips"] == [HEAD_IP]
        assert result["mlflow_uri"] == f"http://{HEAD_IP}:{ports['mlflow']}"
        assert result["mlflow_health"] == "OK"
        assert result["storage"] == str(base / "shared" / "ray_results")
        assert result["auth_mode"] == "token"
        assert result["sweep_rc"] == 0 and result["runs"] == ["FINISHED"], out[-6000:]
        # MLflow answers on loopback from here too, and its stores are where the YAML says.
        with urllib.request.urlopen(f"http://{HEAD_IP}:{ports['mlflow']}/health", timeout=10) as r:
            assert r.read().decode().strip() == "OK"
        assert (base / "home" / "mlflow" / "mlflow.db").exists()
        assert (base / "shared" / "ray_results").is_dir()
        assert (base / "home" / "raybench" / "pyproject.toml").exists()  # working copy mounted
        assert (base / "home" / "raybench" / "raybench" / "__init__.py").exists()
        assert not list((base / "home" / "raybench").rglob("__pycache__"))  # rsync_exclude applied
        assert (base / "home" / ".ray" / "auth_token").read_text() == (base / "token").read_text()
        # Everything this run listens on is on loopback (Ray binds to the node IP it is given).
        listening = _listening(tag)
        ports_open = {int(addr.rsplit(":", 1)[1]) for _, addr in listening}
        assert {ports["gcs"], ports["mlflow"]} <= ports_open, listening
        exposed = [(pid, addr) for pid, addr in listening if not addr.startswith("127.")]
        assert not exposed, f"listening beyond loopback (pid, address): {exposed}"
        t_job = time.monotonic() - t0 - t_up
    finally:
        t1 = time.monotonic()
        rc_down, out_down = _run([RAY_CLI, "down", "-y", str(cfg_path)],
                                 env=env, cwd=REPO, timeout=120, log=log)
        print(f"\ne2e: ray up {t_up:.0f}s, submit {t_job:.0f}s, "
              f"ray down {time.monotonic() - t1:.0f}s; launcher log {log}")
    assert rc_down == 0, f"ray down failed:\n{out_down[-4000:]}"
    assert "stopped" in out_down, out_down[-3000:]  # the shim answered `ray stop`
    # `ray down` stopped Ray; like on a real head, only the MLflow server (own session) is left.
    pgid = int((base / "home" / "mlflow" / "server.pid").read_text())
    left = [p for p in _tagged_pids(tag) if not _is_zombie(p) and _pgid(p) != pgid]
    assert not left, f"still running after ray down: {left}"


def _listening(tag: str) -> list[tuple[int, str]]:
    """(pid, 'ip:port') of TCP sockets in LISTEN state owned by this run's processes."""
    inodes: dict[str, int] = {}
    for pid in _tagged_pids(tag):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                continue
            found.append((inodes[cols[9]], _decode_addr(cols[1])))
    return found


def _decode_addr(hexaddr: str) -> str:
    ip_hex, port_hex = hexaddr.split(":")
    port = int(port_hex, 16)
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, raw[::-1])}:{port}"
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    addr = socket.inet_ntop(socket.AF_INET6, words)
    if addr.startswith("::ffff:") and "." in addr:
        addr = addr[7:]
    return f"{addr}:{port}"
