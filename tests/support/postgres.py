"""A real PostgreSQL server for tests, as a local process on a loopback port (Debian's `postgresql`).

Started and stopped by the harness like Prometheus: `initdb` into a fresh directory, `pg_ctl start` on
127.0.0.1:<free port> with password authentication over TCP (what MLflow's server and Feast use on a
cluster; containers on the host's network reach it the same way), one database per user of it.
PostgreSQL refuses to run as root, so as root the server runs as the package's `postgres` user, in a
directory outside pytest's (mode 0700) temporary tree. Outside CI a machine without the package skips
the caller with how to get it; in CI it fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from serving.local_plane import free_port
from tests.support.availability import unavailable

INSTALL_HINT = "apt-get install postgresql (make e2e-tools does)"
USER = "shepherd"
START_TIMEOUT_SECONDS = 60


def _unavailable(reason: str) -> NoReturn:
    unavailable(reason, INSTALL_HINT)


def _bindir() -> Path:
    """Debian keeps the server's binaries out of PATH, under /usr/lib/postgresql/<major>/bin."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    _unavailable("PostgreSQL's server (pg_ctl, initdb) is not installed")


@dataclass(frozen=True)
class PostgresServer:
    root: Path
    port: int
    password: str
    bindir: Path

    def uri(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """A SQLAlchemy/libpq URI for `database` (no TLS on loopback: `sslmode=disable`)."""
        return f"{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URI."""
        import psycopg

        with psycopg.connect(self.uri("postgres", driver="postgresql"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def log_tail(self, lines: int = 30) -> str:
        log = self.root / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start() -> PostgresServer:
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="shepherd-postgres-"))
    password = secrets.token_hex(16)
    (root / "password").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "password", "postgres", "postgres")
    initdb = [str(bindir / "initdb"), "-D", str(root / "data"), "-U", USER, f"--pwfile={root / 'password'}"]
    initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync"]
    result = subprocess.run(_as_server_user(initdb), capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {result.stderr[-2000:]}")
    server = PostgresServer(root, free_port(), password, bindir)
    try:
        resume(server)
    except RuntimeError:
        stop(server)
        raise
    return server


def resume(server: PostgresServer) -> None:
    """Start the server on its data directory and port (again, after `halt`)."""
    options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.root} -c fsync=off -c max_connections=200"
    data, log = str(server.root / "data"), str(server.root / "server.log")
    pg_ctl = [str(server.bindir / "pg_ctl"), "-D", data, "-l", log, "-o", options]
    result = subprocess.run(
        _as_server_user([*pg_ctl, "-w", "-t", str(START_TIMEOUT_SECONDS), "start"]),
        capture_output=True,
        text=True,
        check=False,
        timeout=START_TIMEOUT_SECONDS + 30,
    )
    if result.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start: {result.stderr[-1000:]}\n{server.log_tail()}")


def halt(server: PostgresServer) -> None:
    """Stop the server as a crash would (`-m immediate`: no shutdown checkpoint), keeping its data."""
    subprocess.run(
        _as_server_user(
            [str(server.bindir / "pg_ctl"), "-D", str(server.root / "data"), "-m", "immediate", "-w", "stop"]
        ),
        capture_output=True,
        check=False,
        timeout=60,
    )


def stop(server: PostgresServer) -> None:
    subprocess.run(
        _as_server_user([str(server.bindir / "pg_ctl"), "-D", str(server.root / "data"), "-m", "fast", "-w", "stop"]),
        capture_output=True,
        check=False,
        timeout=60,
    )
    shutil.rmtree(server.root, ignore_errors=True)
