"""One writer per run directory or matrix cell: lock files taken atomically.

`backdoor_core.rundir.open_run` holds `<parent>/.<run name>.lock` while a command writes its run
directory, so that the same command launched twice (or a new run started at the path of one that
is still stopping) is refused instead of two processes writing one checkpoint folder and history.
The lock sits beside the directory, not in it, so it outlives a deleted directory.
`experiments.cell_lock` locks matrix cells the same way (several `experiments.run` processes
sharing one `out`).

A lock file is created atomically (O_CREAT | O_EXCL) and holds the holder's host name and process
id. A lock left behind by a process that died without removing it (SIGKILL, a machine reset) is
taken over when its holder is on this host and no longer alive; a lock held from another host is
respected (delete the file once that process is known to be gone). (Not handled: two processes
taking over the same dead holder's lock at the same instant.)
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


def holder_alive(holder: dict) -> bool:
    """Whether the process recorded in a lock may still run: always True for another host's
    (it cannot be checked from here), else whether its pid exists."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def read_holder(path: Path) -> dict:
    """The holder recorded in a lock file ({'host', 'pid', 'since'}); {} if unreadable (a lock being
    written this very moment, or a damaged file)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def try_lock(path: Path) -> dict | None:
    """Takes the lock at `path` for this process. Returns None when taken, else the live holder's
    record (busy). A lock whose holder is gone is removed and taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            if not holder or holder_alive(holder):
                return holder or {"host": "?", "pid": "?"}
            path.unlink(missing_ok=True)  # a dead holder's lock: take it over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return None
    return read_holder(path) or {"host": "?", "pid": "?"}


def describe(holder: dict) -> str:
    """'pid N on HOST since TIME' for a lock's holder record."""
    since = f" since {holder['since']}" if holder.get("since") else ""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{since}"


def unlock(path: Path) -> None:
    """Removes this process's lock at `path` (another process's is left alone)."""
    holder = read_holder(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
