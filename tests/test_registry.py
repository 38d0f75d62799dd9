import json
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from blockmae.cli import main
from blockmae.errors import BlockMAEError
from blockmae.registry import STALE_AFTER_S, Registry, config_hash, parse_condition


def _make(tmp_path):
    reg = Registry(tmp_path)
    pre = reg.start_run("pretrain", tmp_path / "pre", {"mask": {"block": 2}, "epochs": 5}, name="b2", heartbeat=False)
    reg.finish_run(pre, "completed", {"loss": 0.5})
    probe = reg.start_run(
        "probe", tmp_path / "probe", {"dataset": "shapetex", "pool": "cls"},
        parent=str(tmp_path / "pre" / "checkpoints" / "last"), name="lin", heartbeat=False,
    )
    reg.finish_run(probe, "completed", {"top1": 0.8, "top5": 0.99})
    return reg, pre, probe


def test_crud_roundtrip(tmp_path):
    reg, pre, probe = _make(tmp_path)
    assert (tmp_path / "registry.sqlite").is_file()
    rec = reg.get(probe)
    assert rec.kind == "probe" and rec.name == "lin" and rec.status == "completed"
    assert rec.config == {"dataset": "shapetex", "pool": "cls"}
    assert rec.config_hash == config_hash({"pool": "cls", "dataset": "shapetex"})
    assert rec.metrics == {"top1": 0.8, "top5": 0.99}
    assert rec.parent.endswith("checkpoints/last")
    assert rec.duration_s is not None and rec.duration_s >= 0
    assert [r.id for r in reg.list_runs()] == [pre, probe]
    assert [r.id for r in reg.list_runs(kind="pretrain")] == [pre]
    with pytest.raises(BlockMAEError, match="no run"):
        reg.finish_run("nope", "completed", {})
    with pytest.raises(BlockMAEError, match="status"):
        reg.finish_run(probe, "running", {})


def test_where_filters(tmp_path):
    reg, pre, probe = _make(tmp_path)
    assert [r.id for r in reg.list_runs(where={"mask.block": 2})] == [pre]
    assert [r.id for r in reg.list_runs(where=["mask.block=2"])] == [pre]
    assert [r.id for r in reg.list_runs(where=["config.mask.block!=2"])] == []
    assert [r.id for r in reg.list_runs(where=["top1>=0.8"])] == [probe]
    assert [r.id for r in reg.list_runs(where=["metrics.top1>0.8"])] == []
    assert [r.id for r in reg.list_runs(where=["dataset=shapetex", "pool=cls"])] == [probe]
    assert [r.id for r in reg.list_runs(where=["name=b2"])] == [pre]
    assert reg.list_runs(where=["missing.key=1"]) == []
    assert parse_condition("a.b>=3") == ("a.b", ">=", "3")
    with pytest.raises(BlockMAEError, match="key=value"):
        parse_condition("novalue")


def test_track_marks_failed_and_interrupted(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(ValueError):
        with reg.track("probe", tmp_path, {"a": 1}) as run:
            run.metrics["partial"] = 1
            raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt):
        with reg.track("probe", tmp_path, {"a": 2}):
            raise KeyboardInterrupt
    with reg.track("probe", tmp_path, {"a": 3}) as run:
        run.metrics["top1"] = 1.0
    failed, interrupted, done = reg.list_runs()
    assert failed.status == "failed" and failed.metrics["error"] == "ValueError: boom" and failed.metrics["partial"] == 1
    assert interrupted.status == "interrupted"
    assert done.status == "completed" and done.metrics == {"top1": 1.0}


def test_dead_process_shows_interrupted(tmp_path):
    code = (
        "import os; from blockmae.registry import Registry; "
        f"Registry({str(tmp_path)!r}).start_run('pretrain', None, {{}}); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    reg = Registry(tmp_path)
    (rec,) = reg.list_runs()
    assert rec.status == "interrupted"
    # The stored row still says running: only the view is derived.
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    live = reg.start_run("probe", None, {}, heartbeat=False)
    assert reg.get(live).status == "running"  # this process is alive


def test_other_host_uses_heartbeat(tmp_path):
    reg = Registry(tmp_path)
    run_id = reg.start_run("pretrain", None, {}, heartbeat=False)
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        con.execute("UPDATE runs SET host='elsewhere', heartbeat_at=? WHERE id=?", (time.time(), run_id))
    assert reg.get(run_id).status == "running"
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        con.execute("UPDATE runs SET heartbeat_at=? WHERE id=?", (time.time() - STALE_AFTER_S - 1, run_id))
    assert reg.get(run_id).status == "interrupted"


def test_concurrent_writers(tmp_path):
    Registry(tmp_path)
    errors = []

    def writer(i):
        try:
            reg = Registry(tmp_path)
            for j in range(10):
                rid = reg.start_run("probe", None, {"i": i, "j": j}, heartbeat=False)
                reg.finish_run(rid, "completed", {"v": j})
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(Registry(tmp_path).list_runs(status="completed")) == 40


def test_runs_cli_table_and_json(tmp_path, capsys):
    reg, pre, probe = _make(tmp_path)
    assert main(["runs", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["id", "kind", "name", "status"]
    probe_line = next(line for line in out if line.startswith(probe))
    # The parent checkpoint lies in the pretraining run's directory: shown as that run's id.
    assert pre in probe_line and "top1=0.8" in probe_line and "completed" in probe_line
    assert main(["runs", "--root", str(tmp_path), "--kind", "probe", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in data] == [probe] and data[0]["metrics"]["top5"] == 0.99
    assert main(["runs", "--root", str(tmp_path), "--where", "mask.block=4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", "--root", str(tmp_path / "empty")]) == 2
    assert "no registry" in capsys.readouterr().err
