"""One live run per output folder: ``<OUTPUT_DIR>/.train.lock`` and the process checks it needs."""
from __future__ import annotations

import datetime
import os
import os.path as osp
import socket
import sys
import threading
import time
import uuid

from gopro_prompts.dassl_compat import get_logger
from gopro_prompts.user_errors import UserError

logger = get_logger("run_lock")


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (owned by anyone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True



class RunLock:
    """``<OUTPUT_DIR>/.train.lock``: refuses a second live run writing into the same folder.

    The lock file holds the pid, host, start time and a token of its run and is
    removed when the run ends (also on an error).  A lock left by a killed run
    is taken over: on the same host when its pid is gone (or was reused by
    another process), from another host when its heartbeat (the file's mtime,
    touched every ``HEARTBEAT_S`` seconds by the live run) is older than
    ``STALE_AFTER_S``.  Creating the folder and the lock also checks that the
    output folder is writable, before anything else is written.
    """

    FILE = ".train.lock"
    HEARTBEAT_S = 30.0
    STALE_AFTER_S = 300.0

    def __init__(self, output_dir, enabled=True):
        self.output_dir = output_dir or "."
        self.path = osp.join(self.output_dir, self.FILE)
        self.enabled = enabled
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc_info):
        if self.enabled:
            self.release()
        return False

    # -- acquire / release ----------------------------------------------------
    def acquire(self):
        _prepare_output_dir(self.output_dir)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as exc:
                raise UserError(
                    f"cannot write into the output directory {self.output_dir} ({exc.strerror}): "
                    "choose a writable --output-dir"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(self._content())
            self._start_heartbeat()
            return
        raise UserError(f"could not take the lock {self.path} (other runs keep taking it): "
                        "check what else is writing into this --output-dir")

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if read_lock(self.path).get("token") == self.token:
            try:
                os.remove(self.path)
            except OSError:
                pass

    def _content(self):
        info = {
            "pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "start_ticks": _process_start_ticks(os.getpid()) or "",
            "command": " ".join(sys.argv),
        }
        return "".join(f"{key}={value}\n" for key, value in info.items())

    def _take_over_if_stale(self):
        """Remove a stale lock (its run is dead); raise UserError for a live one."""
        holder = read_lock(self.path)
        if not holder:  # vanished meanwhile, or half written by a run starting right now
            if osp.exists(self.path) and time.time() - _mtime(self.path) < 5:
                time.sleep(0.2)
            elif osp.exists(self.path):
                logger.warning("Taking over the lock %s: it is unreadable (no pid and token in UTF-8 "
                               "key=value lines) and has not changed for 5 s", self.path)
                _remove_lock_file(self.path, holder)
            return
        alive, why = lock_holder_alive(holder, self.path)
        if alive:
            raise UserError(
                f"another run is writing into {self.output_dir} (pid {holder.get('pid')} on "
                f"{holder.get('host')}, started {holder.get('started')}; lock {self.path}): wait for it to "
                f"finish or use another --output-dir; if that run is dead, delete {self.path}"
            )
        logger.warning("Taking over the stale lock %s (%s)", self.path, why)
        _remove_lock_file(self.path, holder)

    # -- heartbeat --------------------------------------------------------------
    def _start_heartbeat(self):
        def beat():
            while not self._stop.wait(self.HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._thread = threading.Thread(target=beat, name="train-lock-heartbeat", daemon=True)
        self._thread.start()


def _prepare_output_dir(output_dir):
    """Create the output folder or say in one line why it cannot be used."""
    if osp.exists(output_dir) and not osp.isdir(output_dir):
        raise UserError(f"the output directory {output_dir} is a file: choose another --output-dir")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the output directory {output_dir} ({exc.strerror}): choose a writable --output-dir"
        ) from None


def read_lock(path):
    """The ``key=value`` fields of a lock file ({} when it is missing or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):  # not UTF-8: not a lock this code wrote, unreadable
        return {}
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    return fields if "pid" in fields and "token" in fields else {}


def lock_holder_alive(holder, path):
    """``(alive, reason)`` for the run that wrote the lock fields ``holder``."""
    try:
        pid = int(holder["pid"])
    except (KeyError, ValueError):
        return False, "no valid pid in it"
    if holder.get("host") != socket.gethostname():
        age = time.time() - _mtime(path)
        if age > RunLock.STALE_AFTER_S:
            return False, f"run on {holder.get('host')} silent for {age:.0f} s"
        return True, ""
    if not pid_exists(pid):
        return False, f"pid {pid} is gone"
    ticks = holder.get("start_ticks")
    now_ticks = _process_start_ticks(pid)
    if ticks and now_ticks is not None and str(now_ticks) != ticks:
        return False, f"pid {pid} now belongs to another process"
    return True, ""


def _remove_lock_file(path, holder):
    """Remove the stale lock ``holder`` (only if the file still is that one)."""
    aside = f"{path}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)  # atomic: of two runs taking over, one gets the file
    except OSError:
        return
    if read_lock(aside).get("token", "") != holder.get("token", ""):
        # a new run's lock was created meanwhile: put it back (rare race)
        try:
            os.rename(aside, path)
        except OSError:
            pass
        return
    try:
        os.remove(aside)
    except OSError:
        pass


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _process_start_ticks(pid):
    """Start time of ``pid`` in clock ticks since boot (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None
