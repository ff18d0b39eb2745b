"""Structured events: each extension's record of what it did, one JSON object a line in
``SAVE_DIR/gpts_<name>_events.jsonl``. Reports and benchmarks read these files; nothing
parses log messages.

Every record has ``event`` (its kind) and ``update`` (fairseq's update count when it happened:
the number of updates finished) plus the fields its schema names, each checked on write. Only the
data-parallel leader writes, whenever the run has a save dir (also with ``--no-save``: events
are the run's record, not its checkpoint). A resume from a checkpoint written after U updates
drops the records of update U and later (``truncate_at``): what happened then happens again,
so the file always matches the training state it accompanies. A run that starts afresh keeps
only its own records (``keep_this_run``), not those of an earlier run in the same save dir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

EVENTS_FILE = "gpts_{name}_events.jsonl"
REQUIRED = {"event": str, "update": int}


def events_path(save_dir: str, name: str) -> str:
    return os.path.join(save_dir, EVENTS_FILE.format(name=name))


def check_record(record: Mapping, schema: Mapping[str, type | tuple], where: str) -> None:
    """ValueError naming the field unless every field of ``REQUIRED`` and ``schema`` is there
    with its type (None allowed where the schema's type tuple includes ``type(None)``)."""
    for key, kind in {**REQUIRED, **schema}.items():
        if key not in record:
            raise ValueError(f"{where}: missing field '{key}'")
        value = record[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ValueError(f"{where}: field '{key}' is a bool, expected {kind}")
        if not isinstance(value, kind):
            raise ValueError(f"{where}: field '{key}' = {value!r} is not {kind}")


class EventLog:
    """Append-only event file of one extension. ``save_dir`` None (or ``write`` False: a rank
    other than the first) keeps nothing, but records are still checked."""

    def __init__(self, save_dir: str | None, name: str, schema: Mapping[str, Mapping[str, type | tuple]],
                 write: bool = True):
        self.name = name
        self.schemas = dict(schema)  # event kind -> its fields' types
        self.path = events_path(save_dir, name) if save_dir is not None and write else None
        self.written = 0  # records this process appended (the file's last ones)

    def write(self, record: Mapping) -> None:
        kind = record.get("event")
        if kind not in self.schemas:
            raise ValueError(f"{self.name} event: unknown kind {kind!r} (known: {sorted(self.schemas)})")
        check_record(record, self.schemas[kind], f"{self.name} event '{kind}'")
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(dict(record)) + "\n")
        self.written += 1

    def read(self, kinds: Iterable[str] | None = None) -> list[dict]:
        """The records written so far ([] when none or nothing is kept), optionally of some kinds."""
        if self.path is None or not os.path.exists(self.path):
            return []
        return [r for r in read_events_file(self.path) if kinds is None or r["event"] in set(kinds)]

    def truncate_at(self, update: int) -> None:
        """Keep the records with ``record["update"] < update`` (atomic rewrite)."""
        if self.path is not None and os.path.exists(self.path):
            self._rewrite([record for record in read_events_file(self.path) if record["update"] < update])

    def keep_this_run(self) -> None:
        """Keep only the records this process wrote (atomic rewrite)."""
        if self.path is not None and os.path.exists(self.path):
            records = read_events_file(self.path)
            self._rewrite(records[len(records) - self.written:])

    def _rewrite(self, kept: list[dict]) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in kept)
        os.replace(tmp, self.path)


def read_events_file(path: str) -> list[dict]:
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error})") from None
            check_record(record, {}, f"{path}:{number}")
            records.append(record)
    return records


def read_events(save_dir: str, name: str, kinds: Iterable[str] | None = None) -> list[dict]:
    """The records of one extension's log ([] when it wrote none), optionally of some kinds."""
    path = events_path(save_dir, name)
    if not os.path.exists(path):
        return []
    wanted = None if kinds is None else set(kinds)
    return [r for r in read_events_file(path) if wanted is None or r["event"] in wanted]
