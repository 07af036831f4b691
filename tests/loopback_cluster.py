"""A real multi-node Ray cluster on loopback: `ray start --head` plus `ray start --address`, each
node in its own process group so a test can kill one node (or the driver) by PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from net import free_port

BIN = Path(sys.executable).parent



def _node_ports() -> list[str]:
    # every listening port explicit, so two clusters on one machine never collide
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


def cluster_env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


# Ray rewrites "127.0.0.1"/"localhost" in an address to the machine's outward IP before it
# connects; other loopback addresses are left alone, so the nodes live on 127.0.0.2 and 127.0.0.3.
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


class LoopbackCluster:
    def __init__(self, head_cpus: float = 1, worker_cpus: float = 1):
        self.port = free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.head = self._start(HEAD_IP, ["--head", "--port", str(self.port), "--num-cpus", str(head_cpus),
                                          "--include-dashboard=false"])
        self._wait_nodes(1)
        self.worker = self._start(WORKER_IP, ["--address", self.address, "--num-cpus", str(worker_cpus)])
        self._wait_nodes(2)

    def _start(self, ip: str, args: list[str]) -> subprocess.Popen:
        cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address", ip,
               "--disable-usage-stats", *_node_ports(), *args]
        return subprocess.Popen(cmd, env=cluster_env(), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive_nodes(self) -> int:
        code = ("import ray; ray.init(address='%s', logging_level='ERROR'); "
                "print(sum(n['Alive'] for n in ray.nodes()))" % self.address)
        try:
            with socket.create_connection((HEAD_IP, self.port), timeout=2):
                pass  # the head's GCS is up: only then ask it (a driver waits long for a dead GCS)
            out = subprocess.run([sys.executable, "-c", code], env=cluster_env(), capture_output=True,
                                 text=True, timeout=60)
            return int(out.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            return 0

    def _wait_nodes(self, n: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.alive_nodes() >= n:
                return
            time.sleep(2)
        self.shutdown()
        raise RuntimeError(f"loopback Ray cluster did not reach {n} node(s) in {timeout} s")

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def kill_worker(self) -> None:
        self.kill(self.worker)

    def shutdown(self) -> None:
        for proc in (getattr(self, "worker", None), getattr(self, "head", None)):
            if proc is not None and proc.poll() is None:
                self.kill(proc)
        # `ray start --head` records itself as this machine's current cluster; a later plain
        # ray.init() would try to join the dead one
        marker = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if marker.is_file() and marker.read_text().strip() == self.address:
            marker.unlink()
