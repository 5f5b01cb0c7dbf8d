"""The processes `make bench` runs beside Envoy: the MCP upstream and the
rate-limit services (dev-rls, or envoyproxy/ratelimit in front of Redis).

Every process starts in a session of its own, so that `stop` ends it with
whatever it spawned. A service that does not come up is stopped before the
error is raised; the caller stops the ones that did (see bench.py's
ExitStack), on success, on error and on Ctrl-C alike.
"""
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
STARTUP_SECONDS = 20


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1, for programs that cannot bind
    port 0 and report the port they got. The sockets stay open until all n
    are picked, so that the kernel does not hand out one port twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port():
    return free_ports(1)[0]


def cpu_seconds(pid):
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def http_get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def spawn(cmd, log, **kwargs):
    return subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, **kwargs)


def stop(proc):
    """SIGTERM to the process group, SIGKILL after 5 seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(cmd, ready_line, log):
    """Start a program that prints `<ready_line> <address>` once it listens
    (dev-rls, mcp-upstream); return the process and that address."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    try:
        deadline = time.time() + STARTUP_SECONDS
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(ready_line + r" (\S+)", line)
            if m:
                return proc, m.group(1)
        raise SystemExit(f"{cmd[0]} did not start; see {log.name}")
    except BaseException:
        stop(proc)
        raise


def wait_until(proc, what, log, ready):
    """Poll `ready()` until it returns true; fail if `proc` exits first or
    STARTUP_SECONDS pass. OSError (refused connection, HTTP error) from
    `ready` means not yet."""
    deadline = time.time() + STARTUP_SECONDS
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}; see {log.name}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what} was not ready after {STARTUP_SECONDS} s; see {log.name}")


def accepts(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def redis_ping(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


class DevRls:
    """The development rate-limit service: one Rust process, counters in
    memory."""

    label = "dev-rls"

    def __init__(self, binary, limits, log):
        self.proc, addr = start([binary, "--config", str(limits), "--listen", "127.0.0.1:0"],
                                "dev-rls listening on", log)
        self.grpc_port = int(addr.rsplit(":", 1)[1])

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        stop(self.proc)


class EnvoyRatelimit:
    """The production stack: envoyproxy/ratelimit, counting in a Redis of
    its own (persistence off). Configured as in a deployment, through its
    environment; the limits file is read once at startup."""

    label = "envoyproxy/ratelimit + Redis"

    def __init__(self, binary, redis_server, limits, work, log):
        self.procs = []
        try:
            self._start(binary, redis_server, limits, work, log)
        except BaseException:
            self.stop()
            raise

    def _start(self, binary, redis_server, limits, work, log):
        redis_port, port, grpc_port, debug_port = free_ports(4)
        redis = spawn([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no", "--dir", str(work)], log)
        self.procs.append(redis)
        wait_until(redis, "redis-server", log, lambda: redis_ping(redis_port))

        # The service reads <RUNTIME_ROOT>/<RUNTIME_SUBDIRECTORY>/<RUNTIME_APPDIRECTORY>/*.yaml.
        runtime = work / "ratelimit-runtime"
        (runtime / "ratelimit/config").mkdir(parents=True, exist_ok=True)
        (runtime / "ratelimit/config/limits.yaml").write_text(Path(limits).read_text())
        # A clean environment: a ratelimit setting left in the caller's
        # (a local cache, a pool size...) would change what is measured.
        # Its stats are kept but not sent anywhere: without a statsd, the
        # default is to print every one to stdout every 10 s, a cost no
        # deployment pays.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "USE_STATSD": "false",
            "DISABLE_STATS": "true",
            "LOG_LEVEL": "warn",
            "RUNTIME_ROOT": str(runtime),
            "RUNTIME_SUBDIRECTORY": "ratelimit",
            "RUNTIME_APPDIRECTORY": "config",
            "RUNTIME_WATCH_ROOT": "false",
            "RUNTIME_IGNOREDOTFILES": "true",
            "REDIS_SOCKET_TYPE": "tcp",
            "REDIS_URL": f"127.0.0.1:{redis_port}",
            "HOST": "127.0.0.1", "PORT": str(port),
            "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(grpc_port),
            "DEBUG_HOST": "127.0.0.1", "DEBUG_PORT": str(debug_port),
        }
        rls = spawn([binary], log, env=env)
        self.procs.append(rls)

        # Ready: healthy, the limits loaded (its debug port dumps them, one
        # line per limit, keyed `<domain>.<key>`), and gRPC accepting.
        def ready():
            return (urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1).status == 200
                    and "mcp.tool" in http_get(f"http://127.0.0.1:{debug_port}/rlconfig")
                    and accepts(grpc_port))
        wait_until(rls, "envoyproxy/ratelimit", log, ready)
        self.grpc_port = grpc_port

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        # The service first, then the Redis it talks to.
        for proc in reversed(self.procs):
            stop(proc)


def binary(env_var, default):
    path = os.environ.get(env_var, str(default))
    if not os.access(path, os.X_OK):
        raise SystemExit(f"{path} is not an executable (set {env_var}, or run `make bench`, which builds it)")
    return path


# --rls names: how to start each service, given the limits file, a work
# directory and a log.
RLS = {
    "dev-rls": lambda limits, work, log: DevRls(
        binary("DEV_RLS_BIN", ROOT / "target/release/dev-rls"), limits, log),
    "ratelimit": lambda limits, work, log: EnvoyRatelimit(
        binary("RATELIMIT_BIN", ROOT / "target/ratelimit/ratelimit"),
        binary("REDIS_SERVER_BIN", "/usr/bin/redis-server"), limits, work, log),
}
