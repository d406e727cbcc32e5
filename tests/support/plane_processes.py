"""Local planes and their processes, as the tests see them: a plane started like `shepherd up` with
settings in its environment, and the processes behind it found through /proc (Linux)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

from serving.backends import PlaneProcess, start_plane, stop_plane
from serving.local_plane import free_port


@contextlib.contextmanager
def running_plane(home: Path, tracking_uri: str, env: dict[str, str] | None = None):
    """A plane started with `env` added to its environment (it and its children read their settings
    there); stopped afterwards."""
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        plane = start_plane(home, tracking_uri, free_port())
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield plane
    finally:
        stop_and_reap(home)


def stop_and_reap(home: Path) -> None:
    """`stop_plane`, reaping a plane this process started: an unreaped child stays a zombie, which
    `stop_plane` takes for a running plane until its 20 s deadline."""
    record = PlaneProcess.record(home)
    if not record.exists():
        return
    pid = json.loads(record.read_text())["pid"]
    stop_plane_thread = threading.Thread(target=stop_plane, args=(home,), daemon=True)
    stop_plane_thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
        except ChildProcessError:  # already reaped, or not ours
            break
        time.sleep(0.1)
    stop_plane_thread.join(timeout=30)


def plane_pid(home: Path) -> int:
    found = PlaneProcess.find(home)
    assert found is not None, "the plane is not running"
    return found.pid


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...


def is_gone(pid: int) -> bool:
    """No such process, or only its exit status is left (a zombie holds no memory and no port)."""
    stat = _stat(pid)
    return stat is None or stat[0] == "Z"


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == str(pid) and stat[0] != "Z":
                found.append(int(entry))
    return found


def drift_services(plane: int) -> list[int]:
    """The plane's drift service processes (its children running `monitoring.drift`)."""
    found = []
    for pid in children_of(plane):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"monitoring.drift" in handle.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


def pid_serving(port: int) -> int:
    """The predictor process listening on `port` (its command line names the port)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if f"--http_port={port}".encode() in handle.read().split(b"\0"):
                        return int(entry)
            except OSError:
                continue
    raise LookupError(f"no process serves port {port}")


def has_pending_sigterm(pid: int) -> bool:
    """Whether SIGTERM was sent to `pid` and not delivered yet (it is stopped)."""
    with open(f"/proc/{pid}/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    pending = int(fields["ShdPnd"].strip(), 16) | int(fields["SigPnd"].strip(), 16)
    return bool(pending & (1 << (15 - 1)))


def listening_sockets(pids: list[int]) -> set[tuple[str, int]]:
    """(local address as /proc/net/tcp{,6} spells it, port) of every listening TCP socket the processes
    `pids` hold, as `ss -ltnp` would list them."""
    inodes = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A: LISTEN
                    address, port = local.rsplit(":", 1)
                    found.add((address, int(port, 16)))
    return found
