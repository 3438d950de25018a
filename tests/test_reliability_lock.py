"""Issue 8: two runs never write into the same output folder unnoticed (train.py's RunLock + the scripts)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gopro_prompts import train
from gopro_prompts.run_lock import RunLock, read_lock
from gopro_prompts.user_errors import UserError

REPO = Path(__file__).resolve().parents[1]
LOCK = RunLock.FILE


@pytest.fixture(autouse=True)
def _no_env_report(monkeypatch):
    """collect_env_info runs pip and friends (seconds): not what these tests are about."""
    monkeypatch.setattr(train, "collect_env_info", lambda: "(skipped in tests)")


@pytest.fixture
def live_pid():
    """The pid of a process that stays alive during the test."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _write_lock(folder, pid, host=None, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"pid": pid, "host": host or socket.gethostname(), "token": "other-run",
              "started": "2024-01-01T00:00:00", **extra}
    (folder / LOCK).write_text("".join(f"{k}={v}\n" for k, v in fields.items()))
    return folder / LOCK


def test_a_second_live_run_is_refused_with_one_line(capfd, tmp_path, live_pid, synthetic_root):
    out = tmp_path / "run"
    lock = _write_lock(out, live_pid)
    code = train.cli(["--trainer", "CoOp", "--output-dir", str(out), "--no-train",
                      "DATASET.NUM_SHOTS", "1"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"another run is writing into {out} (pid {live_pid} on {socket.gethostname()}" in err[0]
    assert f"delete {lock}" in err[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing written: not even a log
    assert read_lock(lock)["token"] == "other-run"


def test_the_lock_of_a_dead_run_is_taken_over_and_released(tmp_path, dead_pid, synthetic_root):
    out = tmp_path / "run"
    _write_lock(out, dead_pid)
    train.main(["--trainer", "CoOp", "--output-dir", str(out), "--no-train",
                "DATASET.NUM_SHOTS", "1"])
    assert not (out / LOCK).exists()
    assert (out / "log.txt").is_file()


def test_a_lock_is_held_during_the_run_and_released_after_an_error(capfd, tmp_path, synthetic_root, monkeypatch):
    out = tmp_path / "run"
    seen = []
    build = train.build_trainer

    def build_and_look(cfg):
        seen.append(read_lock(out / LOCK))
        return build(cfg)

    monkeypatch.setattr(train, "build_trainer", build_and_look)
    code = train.cli(["--trainer", "CoOp", "--output-dir", str(out),
                      "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "nope"])
    assert code == 2 and "SUBSAMPLE_CLASSES" in capfd.readouterr().err
    assert seen and seen[0]["pid"] == str(os.getpid()) and seen[0]["host"] == socket.gethostname()
    assert not (out / LOCK).exists()


def test_two_locks_on_one_folder_exclude_each_other(tmp_path):
    with RunLock(str(tmp_path)):
        with pytest.raises(UserError, match="another run is writing into"):
            RunLock(str(tmp_path)).acquire()
    with RunLock(str(tmp_path)):  # released: free again
        pass
    assert not (tmp_path / LOCK).exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path, live_pid):
    _write_lock(tmp_path, live_pid, start_ticks=1)  # that pid started at another time: another process
    with RunLock(str(tmp_path)):
        assert read_lock(tmp_path / LOCK)["pid"] == str(os.getpid())


def test_a_lock_from_another_host_is_stale_only_without_heartbeat(tmp_path):
    lock = _write_lock(tmp_path, 12345, host="some-other-node")
    with pytest.raises(UserError, match="pid 12345 on some-other-node"):
        RunLock(str(tmp_path)).acquire()
    old = time.time() - RunLock.STALE_AFTER_S - 60
    os.utime(lock, (old, old))
    with RunLock(str(tmp_path)):
        assert read_lock(lock)["host"] == socket.gethostname()


def test_the_live_run_keeps_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(RunLock, "HEARTBEAT_S", 0.02)
    with RunLock(str(tmp_path)):
        lock = tmp_path / LOCK
        os.utime(lock, (0, 0))
        deadline = time.time() + 5
        while lock.stat().st_mtime == 0 and time.time() < deadline:
            time.sleep(0.02)
        assert lock.stat().st_mtime > 0


# ------------------------------------------------------------------------------ scripts
def _script(script, out, *args, env_extra=None):
    env = {**os.environ, "DATA": str(out), "OUTPUT": str(out), "DRY_RUN": "1", "PYTHON": sys.executable,
           **(env_extra or {})}
    return subprocess.run(["bash", str(REPO / "scripts" / script), *map(str, args)], env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("script,phase", [("cocoop/base2new_train.sh", "train_base"),
                                          ("cocoop/base2new_test.sh", "test_new")])
def test_scripts_refuse_a_folder_a_live_run_writes_into(script, phase, tmp_path, live_pid, dead_pid):
    run_dir = tmp_path / "base2new" / phase / "dtd/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed1"
    _write_lock(run_dir, live_pid)
    (run_dir / "log.txt").write_text("epoch [1/10] ...\n")  # unfinished so far
    result = _script(script, tmp_path, "dtd", 1)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"another run is writing into {run_dir} (pid {live_pid}" in result.stderr
    assert "(dry run)" not in result.stdout
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK, "log.txt"]  # its log was not moved aside

    _write_lock(run_dir, dead_pid)  # that run died: resume it
    result = _script(script, tmp_path, "dtd", 1)
    assert result.returncode == 0, result.stderr
    assert "(dry run)" in result.stdout and "unfinished" in result.stdout
