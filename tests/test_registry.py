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
    with pytest.raises(BlockMAEError, match="no run has the key 'missing.key'; valid keys: .*mask.block"):
        reg.list_runs(where=["missing.key=1"])
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


def _writer_process(root, i, n):
    from blockmae.registry import Registry

    reg = Registry(root, timeout_s=120)
    for j in range(n):
        rid = reg.start_run("probe", None, {"i": i, "j": j}, heartbeat=False)
        reg.log_metrics(rid, {"v": j}, epoch=j)
        reg.finish_run(rid, "completed", {"v": j})


def test_concurrent_writer_processes_rollback_journal(tmp_path):
    """Several processes writing at once (parallel slots, array tasks): no lost row, no 'database is locked',
    and the file keeps the rollback journal (WAL is unsafe on network file systems)."""
    import multiprocessing as mp

    Registry(tmp_path)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer_process, args=(str(tmp_path), i, 8)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    runs = Registry(tmp_path).list_runs(status="completed")
    assert sorted((r.config["i"], r.config["j"]) for r in runs) == [(i, j) for i in range(4) for j in range(8)]
    assert all(r.history and r.history[0]["metrics"] == {"v": r.config["j"]} for r in runs)
    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not (tmp_path / "registry.sqlite-wal").exists()


def test_corrupt_or_truncated_registry_is_one_line_error(tmp_path, capsys):
    reg, _, _ = _make(tmp_path)
    db = tmp_path / "registry.sqlite"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])  # truncated mid-file
    assert main(["runs", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a valid blockmae registry" in err and "--reindex" in err
    db.write_bytes(b"this is not sqlite at all" * 100)
    assert main(["runs", "--root", str(tmp_path)]) == 2
    assert "not a valid blockmae registry" in capsys.readouterr().err


def test_foreign_sqlite_file_is_refused_untouched(tmp_path, capsys):
    db = tmp_path / "registry.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE orders (id INTEGER, item TEXT)")
        con.execute("INSERT INTO orders VALUES (1, 'tea')")
    before = db.read_bytes()
    assert main(["runs", "--root", str(tmp_path)]) == 2
    assert "not a blockmae registry (tables: orders)" in capsys.readouterr().err
    assert db.read_bytes() == before
    with sqlite3.connect(db) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["orders"]


def test_legacy_registry_without_marker_is_adopted(tmp_path):
    from blockmae.registry.store import _SCHEMA

    with sqlite3.connect(tmp_path / "registry.sqlite") as con:
        con.execute(_SCHEMA.split(";")[0])  # the runs table as written before the marker existed
    reg = Registry(tmp_path)
    rid = reg.start_run("probe", None, {}, heartbeat=False)
    assert reg.get(rid).status == "running"


def test_where_unknown_key_or_operator_exits_2(tmp_path, capsys):
    _make(tmp_path)
    assert main(["runs", "--root", str(tmp_path), "--where", "mask.blok=2"]) == 2
    err = capsys.readouterr().err
    assert "no run has the key 'mask.blok'" in err and "mask.block" in err and err.count("\n") == 1
    for expr in ("mask.block==2", "mask.block=>2", "top1=<0.5"):
        assert main(["runs", "--root", str(tmp_path), "--where", expr]) == 2
        assert "unknown operator; use one of = != > >= < <=" in capsys.readouterr().err
    assert main(["runs", "--root", str(tmp_path), "--where", "mask.block=4"]) == 0
    assert "no matching runs" in capsys.readouterr().err


def test_record_files_and_reindex(tmp_path, capsys):
    reg, pre, probe = _make(tmp_path)
    reg.log_metrics(pre, {"loss": 0.7}, epoch=2)
    record = json.loads((tmp_path / "pre" / "run_record.json").read_text())
    assert record["row"]["id"] == pre and record["row"]["status"] == "completed"
    assert record["history"][0]["epoch"] == 2 and record["history"][0]["metrics"] == {"loss": 0.7}
    # A second run in the same folder keeps its own file instead of overwriting the first one's.
    again = reg.start_run("pretrain", tmp_path / "pre", {"mask": {"block": 2}}, heartbeat=False)
    assert (tmp_path / "pre" / f"run_record-{again}.json").is_file()
    (tmp_path / "registry.sqlite").write_bytes(b"garbage" * 50)
    assert main(["runs", "--root", str(tmp_path), "--reindex"]) == 0
    assert "reindexed 3 runs" in capsys.readouterr().out
    rebuilt = Registry(tmp_path)
    assert [r.id for r in rebuilt.list_runs()] == [pre, probe, again]
    assert rebuilt.get(probe).metrics == {"top1": 0.8, "top5": 0.99}
    assert rebuilt.get(pre).history[0]["metrics"] == {"loss": 0.7}
    assert list(tmp_path.glob("registry.sqlite.old-*"))
