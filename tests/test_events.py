"""The structured event log: schema checked on write, records read back, a resume drops what
happened at and after its checkpoint's update, other ranks keep nothing."""

import json

import pytest

from gpts_fairseq.events import EventLog, events_path, read_events
from gpts_fairseq.growth.extension import EVENT_SCHEMA as GROWTH_SCHEMA
from gpts_fairseq.subsets.epochs import EVENT_SCHEMA as SUBSETS_SCHEMA

SCHEMA = {"step": {"loss": (float, type(None)), "name": str}}


def test_records_are_checked_and_read_back(tmp_path):
    log = EventLog(str(tmp_path), "demo", SCHEMA)
    log.write({"event": "step", "update": 0, "loss": 1.5, "name": "a"})
    log.write({"event": "step", "update": 3, "loss": None, "name": "b"})
    assert events_path(str(tmp_path), "demo") == str(tmp_path / "gpts_demo_events.jsonl")
    assert [r["name"] for r in read_events(str(tmp_path), "demo")] == ["a", "b"] == [r["name"] for r in log.read()]
    for bad, message in [({"event": "jump", "update": 1}, "unknown kind 'jump'"),
                         ({"event": "step", "update": 1, "name": "c"}, "missing field 'loss'"),
                         ({"event": "step", "update": 1, "loss": "high", "name": "c"}, "field 'loss'"),
                         ({"event": "step", "update": True, "loss": 1.0, "name": "c"}, "field 'update' is a bool")]:
        with pytest.raises(ValueError, match=message):
            log.write(bad)
    assert len(log.read()) == 2


def test_resume_drops_records_at_and_after_the_checkpoint(tmp_path):
    log = EventLog(str(tmp_path), "demo", SCHEMA)
    for update in (0, 4, 8, 9):
        log.write({"event": "step", "update": update, "loss": 1.0, "name": str(update)})
    log.truncate_at(8)
    assert [r["update"] for r in read_events(str(tmp_path), "demo")] == [0, 4]
    log.write({"event": "step", "update": 8, "loss": 1.0, "name": "again"})
    assert [r["name"] for r in read_events(str(tmp_path), "demo")] == ["0", "4", "again"]


def test_a_fresh_run_keeps_only_its_own_records(tmp_path):
    earlier = EventLog(str(tmp_path), "demo", SCHEMA)
    for update in (0, 5):
        earlier.write({"event": "step", "update": update, "loss": 1.0, "name": "earlier"})
    fresh = EventLog(str(tmp_path), "demo", SCHEMA)
    fresh.write({"event": "step", "update": 0, "loss": 2.0, "name": "fresh"})
    fresh.keep_this_run()
    assert [r["name"] for r in read_events(str(tmp_path), "demo")] == ["fresh"]
    EventLog(str(tmp_path), "demo", SCHEMA).keep_this_run()  # wrote nothing: keeps nothing
    assert read_events(str(tmp_path), "demo") == []


def test_other_ranks_and_runs_without_a_save_dir_keep_nothing(tmp_path):
    record = {"event": "step", "update": 0, "loss": 1.0, "name": "x"}
    EventLog(str(tmp_path), "demo", SCHEMA, write=False).write(record)
    EventLog(None, "demo", SCHEMA).write(record)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="missing field 'name'"):  # still checked
        EventLog(None, "demo", SCHEMA).write({"event": "step", "update": 0, "loss": 1.0})


def test_a_broken_line_is_named(tmp_path):
    (tmp_path / "gpts_demo_events.jsonl").write_text(json.dumps({"event": "step", "update": 0}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"gpts_demo_events.jsonl:2: not JSON"):
        read_events(str(tmp_path), "demo")


def test_extension_schemas_hold_what_the_log_lines_held():
    """What benchmarks/growth.py and benchmarks/subsets.py read from log lines is in the records."""
    assert {"stage", "layers", "ffn", "tokens", "parameters", "loss_before", "loss_after", "seconds",
            "checksum"} <= set(GROWTH_SCHEMA["growth"])
    assert {"epoch", "kind", "selector", "fraction", "size", "count", "feature_seconds", "greedy_seconds",
            "hash"} <= set(SUBSETS_SCHEMA["selection"])
