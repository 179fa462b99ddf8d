"""A private Redis Cluster per test session: 3 masters and 3 replicas from `redis-server` on
PATH, on free ports below 55536 (the cluster bus listens on port + 10000), created with
`redis-cli --cluster create`. A short cluster-node-timeout lets a replica take over a killed
master within seconds. The machine's shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

NODE_TIMEOUT_MS = 1000
PORT_CEILING = 55536  # port + 10000 (the bus) must stay a valid port


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= PORT_CEILING or port in taken:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """Six cluster-mode redis-servers; `kill(port)` SIGKILLs one of them."""

    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        password: str | None = None,
        tls_cert: Path | None = None,
    ):
        """`tls_cert`: a self-signed certificate (its key beside it as key.pem) for TLS on
        every client, bus and replication link; plain TCP is then off."""
        self.workdir = workdir
        self.password = password
        self.tls_cert = tls_cert
        self.size = masters * (1 + replicas)
        self.replicas = replicas
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Any one node names the cluster; the clients discover the rest."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls_cert is None:
            return f"redis://{auth}127.0.0.1:{self.ports[0]}/0"
        query = f"ssl_cert_reqs=required&ssl_ca_certs={self.tls_cert}"
        return f"rediss://{auth}127.0.0.1:{self.ports[0]}/0?{query}"

    def _listen(self, port: int) -> list[str]:
        if self.tls_cert is None:
            return ["--port", str(port)]
        key = self.tls_cert.with_name("key.pem")
        return [
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(self.tls_cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(self.tls_cert), "--tls-auth-clients", "no",
            "--tls-cluster", "yes", "--tls-replication", "yes",
        ]  # fmt: skip

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (TLS and password as the cluster's)."""
        if self.tls_cert is None:
            return redis.Redis(host="127.0.0.1", port=port, password=self.password)
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.tls_cert),
        )

    def start(self, attempts: int = 3) -> None:
        """Start the nodes and make them a cluster. Another process on this machine may take
        a free port before a node binds it: then start again on other ports."""
        for attempt in range(1, attempts + 1):
            taken: set[int] = set()
            for _ in range(self.size):
                taken.add(free_cluster_port(taken))
            self.ports = sorted(taken)
            try:
                self._start()
                return
            except RuntimeError:
                self.stop()
                if attempt == attempts:
                    raise

    def _start(self) -> None:
        binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            raise FileNotFoundError("redis-server and redis-cli must be on PATH (make test)")
        for port in self.ports:
            home = self.workdir / str(port)
            home.mkdir(exist_ok=True)
            (home / "nodes.conf").unlink(missing_ok=True)
            args = [
                binary,
                *self._listen(port),
                "--bind", "127.0.0.1",
                "--dir", str(home),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--save", "",
                "--appendonly", "no",
                "--maxmemory-policy", "noeviction",
            ]  # fmt: skip
            if self.password:
                args += ["--requirepass", self.password, "--masterauth", self.password]
            self.procs[port] = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        for port in self.ports:
            self._wait_ping(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        if self.tls_cert is not None:
            auth += ["--tls", "--cacert", str(self.tls_cert)]
        subprocess.run(
            [cli, *auth, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas)]
            + ["--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_healthy()

    def _wait_ping(self, port: int) -> None:
        client = self.node(port)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.procs[port].poll() is not None:
                        raise RuntimeError(f"redis-server did not start on {port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok and every slot has a master."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for port, proc in self.procs.items():
                if proc.poll() is not None:
                    continue
                client = self.node(port)
                try:
                    states.append(client.cluster("info")["cluster_state"])
                except redis.RedisError:
                    states.append("down")
                finally:
                    client.close()
            if states and all(state == "ok" for state in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not healthy: {states}")
            time.sleep(0.1)

    def client(self) -> RedisCluster:
        """A cluster client bootstrapped from a node that is still running."""
        kwargs = dict(self.node(next(iter(self.procs))).connection_pool.connection_kwargs)
        kwargs.pop("db")  # a cluster has only database 0
        return RedisCluster(**kwargs)

    def masters(self) -> list[int]:
        """The ports of the live masters, as the cluster sees them now."""
        client = self.client()
        try:
            return sorted(node.port for node in client.get_primaries())
        finally:
            client.close()

    def kill(self, port: int) -> None:
        """SIGKILL one node."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def wait_failover(self, port: int, timeout: float = 30) -> None:
        """Until a replica has taken over the slots of the killed master on `port`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if port not in self.masters():
                    break
            except redis.RedisError:
                pass  # the map is changing
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from {port}")
            time.sleep(0.1)
        self.wait_healthy(timeout)

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushall(target_nodes=RedisCluster.PRIMARIES)
        finally:
            client.close()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(10)
        self.procs.clear()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterServers) -> str:
    """The session's cluster, emptied (never the shared 6379)."""
    redis_cluster.flush()
    return redis_cluster.url
