"""Who may change what the local plane serves: the user who started it (or whoever they hand its token).

The plane issues a bearer token when it starts and keeps it in a file only its user can read, keyed by
the plane's address: `~/.config/shepherd/planes/<host>-<port>.token` (directory 0700, file 0600), as
kubectl keeps credentials in `~/.kube`. Every writer of that user (the CLI, the deploy step, the rollout
loop, the webhook, the tests) finds it from the plane's URL alone; another user, or a container, is
given it in `SHEPHERD_PLANE_TOKEN`. Writes (applying an object, recording an event, posting payload logs)
need it; reads (status, events, metrics, drift results) do not.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

ENV_PLANE_TOKEN = "SHEPHERD_PLANE_TOKEN"
ENV_CONFIG_DIR = "SHEPHERD_CONFIG_DIR"


def token_file(url: str) -> Path:
    """Where the token of the plane at `url` is kept."""
    parts = urlsplit(url)
    config = Path(os.environ.get(ENV_CONFIG_DIR) or Path.home() / ".config" / "shepherd")
    return config / "planes" / f"{parts.hostname}-{parts.port or 80}.token"


def issue_token(url: str) -> str:
    """The plane's token: the one kept for this address (a restarted plane keeps its clients working),
    or a new one, written so that only this user can read it."""
    path = token_file(url)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    if path.exists():
        os.chmod(path, 0o600)
        existing = path.read_text().strip()
        if existing:
            return existing
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    tmp.replace(path)
    return token


def token_for(url: str) -> str | None:
    """The token a client of the plane at `url` sends: SHEPHERD_PLANE_TOKEN, else the kept one."""
    if os.environ.get(ENV_PLANE_TOKEN):
        return os.environ[ENV_PLANE_TOKEN]
    path = token_file(url)
    try:
        return path.read_text().strip() or None
    except OSError:  # no plane was started here by this user
        return None


def authorized(authorization_header: str | None, token: str) -> bool:
    """Does `Authorization: <header>` carry `token` (compared in constant time)?"""
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((authorization_header or "").encode(), expected)
