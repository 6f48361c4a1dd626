"""One writer per run directory, and processes that do not outlive the command that made them.

Why: after `kill -9` of the CLI, the forked distilabel child and its workers kept committing
shards while an immediate rerun started its own: two writers, one ledger (issue 14 item 4).

The lock is an advisory `flock` on `RUN/.lock`, taken by `generate`, `curate` and `run` right
after the spec is validated and bound (runctx.prepare), before any stage writes.
- The kernel drops a flock when the last descriptor of it closes, i.e. when the holder and every
  process forked from it are gone. So a stale lock cannot exist: no pid files to clean up, and a
  reused pid cannot fake a holder. Forked children (the generation child, distilabel's workers)
  share the descriptor, so a left-over child still counts as a writer: a rerun waits for it
  (a few seconds, they die with their parent, see `die_with_parent`) and then takes over.
- The file's content (pid, process start time from /proc/<pid>/stat, host, command, when) is only
  for the refusal line: `RUN is in use by pid N (started ...)`. When that pid is gone, or was
  reused (its start time differs), the line names the left-over process that still holds it.
- Commands hold the lock for their whole life: `acquire()` returns a handle released by
  `release()`, by `with`, or when the handle is garbage-collected (the command function returned);
  process exit releases it in any case.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from distilforge.errors import UserError

LOCK_NAME = ".lock"
LEFTOVER_WAIT_S = 10.0  # how long a new command waits for a dead holder's children to die
PR_SET_PDEATHSIG = 1

_held: dict[str, "RunLock"] = {}  # resolved path -> handle (re-entrant within one process)


class RunInUseError(UserError):
    """Another live process writes this run directory (rc 2: wait for it, or stop it)."""


def proc_start(pid: int) -> int | None:
    """Process start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None if gone.
    With the pid it identifies a process: a reused pid has a different start time."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    if fields[0] in ("Z", "X"):  # a zombie has finished: it writes nothing any more
        return None
    return int(fields[19])


def identity(pid: int | None = None) -> dict:
    """Who a process is: pid + start time + host (what lock files and teacher state files record)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start": proc_start(pid), "host": socket.gethostname()}


def is_alive(ident: dict | None) -> bool:
    """True while the process recorded in `ident` still runs (same pid AND same start time).
    A record from another host cannot be checked from here and counts as alive."""
    if not ident or not ident.get("pid"):
        return False
    if ident.get("host") and ident["host"] != socket.gethostname():
        return True
    start = proc_start(int(ident["pid"]))
    return start is not None and (ident.get("start") is None or start == ident["start"])


class RunLock:
    def __init__(self, path: Path, fd: int):
        self.path, self.fd, self.depth = path, fd, 1

    def release(self) -> None:
        if self.fd < 0:
            return
        self.depth -= 1
        if self.depth > 0:
            return
        _held.pop(str(self.path), None)
        try:
            os.ftruncate(self.fd, 0)  # the next reader sees no holder
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock (children that inherited it keep it until they exit)
        self.fd = -1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def acquire(run: str | Path, what: str = "", wait_leftover_s: float = LEFTOVER_WAIT_S) -> RunLock:
    """Take RUN's writer lock or raise RunInUseError naming the holder."""
    run = Path(run)  # exists: commands take the lock right after `prepare` validated/created RUN
    path = (run / LOCK_NAME).resolve()
    mine = _held.get(str(path))
    if mine is not None and mine.fd >= 0:
        mine.depth += 1
        return mine
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd programs (servers)
    deadline = time.time() + wait_leftover_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _read(path)
            if is_alive(holder.get("owner")) or time.time() >= deadline:
                os.close(fd)
                raise RunInUseError(_refusal(run, path, holder)) from None
            time.sleep(0.2)  # the owner died: its children are being killed with it
    info = {"owner": identity(), "command": what, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    lock = RunLock(path, fd)
    _held[str(path)] = lock
    return lock


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _refusal(run: Path, path: Path, holder: dict) -> str:
    owner = holder.get("owner") or {}
    cmd = f"`distilforge {holder['command']}`, " if holder.get("command") else ""
    since = holder.get("since", "at an unknown time")
    if is_alive(owner):
        host = f" on {owner['host']}" if owner.get("host") and owner["host"] != socket.gethostname() else ""
        return (f"{run} is in use by pid {owner['pid']}{host} ({cmd}started {since}); "
                "wait for it to finish or stop it, then rerun")
    left = holders(path)
    who = f"pid {', '.join(map(str, left))}" if left else "a process"
    return (f"{run} is in use by {who} left behind by pid {owner.get('pid', '?')} ({cmd}started {since}, now dead); "
            f"stop it (kill {' '.join(map(str, left)) or 'PID'}), then rerun")


def holders(path: Path) -> list[int]:
    """Live pids with `path` open (the ones keeping its flock)."""
    target, out = str(Path(path).resolve()), []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(f) == target for f in fd_dir.iterdir()):
                out.append(int(fd_dir.parent.name))
        except OSError:
            continue
    return sorted(p for p in out if p != os.getpid())


# --- processes that die with their parent ---------------------------------------------------

def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent *thread* exits (Linux prctl).
    Call in a freshly forked child (or as a Popen preexec_fn). False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Make this forked child, and every process later forked beneath it, die with `parent_pid`.

    Three layers, because each alone has a gap: PDEATHSIG on this process (instant, but fires on the
    parent *thread's* exit, and not at all if the parent died before the prctl: checked right after);
    an at-fork hook so every descendant (distilabel's pool workers, its Manager) gets PDEATHSIG
    towards its own parent, chaining the kill down; and a watcher thread that polls getppid() and,
    once reparented, SIGKILLs every descendant and this process."""
    set_pdeathsig()
    if os.getppid() != parent_pid:
        os._exit(1)
    os.register_at_fork(after_in_child=_chain_pdeathsig)
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_s), daemon=True, name="parent-watch").start()


def _chain_pdeathsig() -> None:
    parent = os.getppid()
    set_pdeathsig()
    if os.getppid() != parent:
        os._exit(1)


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children first), from /proc."""
    kids: dict[int, list[int]] = {}
    for st in Path("/proc").glob("[0-9]*/stat"):
        try:
            f = st.read_text().rsplit(")", 1)[1].split()
            kids.setdefault(int(f[1]), []).append(int(st.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out
