"""A persistent, content-addressed, append-only store of VLM labels (SQLite, WAL).

The key of a label is a sha256 over everything that decides the answer: the two
images' bytes (in order: (A, B) and (B, A) are different queries), the prompt
version, the model, the task text and the query settings (prompt texts, sampling,
structured output, keyframe count). Re-running a labeling job therefore reuses
every stored label, and a run killed mid-way resumes where it stopped: each label
is committed as soon as it arrives, and `INSERT OR IGNORE` never duplicates one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping

from plare_jax.labeling.answers import storable_text
from plare_jax.errors import PlareError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    key TEXT PRIMARY KEY,
    preference INTEGER NOT NULL CHECK (preference IN (0, 1, -1)),
    model TEXT,
    prompt_version TEXT,
    task_text TEXT,
    stage1_text TEXT,
    stage2_text TEXT,
    malformed INTEGER NOT NULL DEFAULT 0,
    latency_s REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created_at REAL NOT NULL
)
"""
RECORD_FIELDS = (
    "preference",
    "model",
    "prompt_version",
    "task_text",
    "stage1_text",
    "stage2_text",
    "malformed",
    "latency_s",
    "prompt_tokens",
    "completion_tokens",
    "created_at",
)


class LabelStoreError(PlareError, RuntimeError):
    """The label store file cannot be used: not a SQLite database, corrupt, or another schema.

    Attributes:
        path: the store file.
    """

    def __init__(self, message: str, path: str | os.PathLike):
        super().__init__(message)
        self.path = os.fspath(path)


def _recovery_hint(path: str) -> str:
    return (
        f"Move {path} aside (or delete it) and run again: labels missing from the store are asked for "
        f"again. `sqlite3 {path} .recover` may save the labels it still holds."
    )


def label_key(image_a: bytes, image_b: bytes, *, prompt_version: str, model: str, task_text: str,
              settings: Mapping | None = None) -> str:  # fmt: skip
    """The content address of one labeling query.

    Args:
        image_a: PNG bytes of the first clip's image.
        image_b: PNG bytes of the second clip's image.
        prompt_version: Version of the prompt templates (e.g. "v1").
        model: Name of the served model.
        task_text: Task description sent to the model.
        settings: Anything else that decides the answer (JSON-serialisable: prompt text hash,
            temperature, max_tokens, ...); None leaves the key as it was without settings.

    Returns:
        64-character hex sha256. Each field is length-prefixed so that no two
        different queries can share a byte stream.
    """
    parts = [bytes(image_a), bytes(image_b), prompt_version.encode(), model.encode(), task_text.encode()]
    if settings is not None:
        parts.append(json.dumps(dict(settings), sort_keys=True, separators=(",", ":")).encode())
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


class LabelStore:
    """Labels on disk, keyed by `label_key`.

    Use as a context manager, or call `close()`. One store per process; several
    processes may read and append to the same file (SQLite locking, WAL).

    Args:
        path: SQLite file; parent folders are created.

    Raises:
        LabelStoreError: the file exists but is not a usable label store (not SQLite, corrupt
            or truncated, or a table `labels` of another layout); the message says what to do.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            self._open()
        except sqlite3.DatabaseError as e:  # also its subclass OperationalError
            self._conn.close()
            if "locked" in str(e) or "busy" in str(e):
                raise  # another process holds the file: not damage
            raise LabelStoreError(
                f"the label store {self.path} is corrupt or not a label store ({e}). {_recovery_hint(self.path)}",
                self.path,
            ) from e
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"could not put label store {self.path} in WAL mode (got {mode!r}); use a local file system.")
        # NORMAL in WAL mode: a committed label survives a process crash (SIGKILL);
        # only an OS crash / power loss can lose the last commits, never corrupt the file.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        # A truncated or overwritten file can still open; quick_check reads every page
        # (milliseconds for thousands of labels), so damage shows here, not mid-run.
        problems = [row[0] for row in self._conn.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            raise LabelStoreError(
                f"the label store {self.path} is corrupt ({'; '.join(problems)}). {_recovery_hint(self.path)}",
                self.path,
            )
        self._conn.execute(_SCHEMA)
        self._conn.commit()
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(labels)")}
        missing = sorted({"key", *RECORD_FIELDS} - columns)
        if missing:
            raise LabelStoreError(
                f"{self.path} has a table `labels` without the columns {missing}: it is not a plare-jax label "
                "store. Pass another path, or move the file aside.",
                self.path,
            )

    @contextlib.contextmanager
    def _damage_is_a_store_error(self):
        # Damage inside a page (e.g. a flipped byte in a stored text) passes quick_check
        # and shows only when that row is read.
        try:
            yield
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise
            raise LabelStoreError(
                f"the label store {self.path} is corrupt ({e}). {_recovery_hint(self.path)}", self.path
            ) from e

    @property
    def journal_mode(self) -> str:
        """SQLite journal mode of the open file ("wal")."""
        return self._conn.execute("PRAGMA journal_mode").fetchone()[0]

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """Returns `{key: record}` for the keys that are stored (missing keys are absent)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, dict] = {}
        chunk = 500  # stay below SQLite's bound-parameter limit
        cols = ", ".join(RECORD_FIELDS)
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            with self._damage_is_a_store_error():
                rows = self._conn.execute(
                    f"SELECT key, {cols} FROM labels WHERE key IN ({', '.join('?' * len(part))})", part
                ).fetchall()
            for row in rows:
                found[row[0]] = dict(zip(RECORD_FIELDS, row[1:]))
        return found

    def put(self, key: str, record: dict) -> bool:
        """Stores one label and commits; returns False if the key was already stored.

        Args:
            key: From `label_key`.
            record: Must hold "preference" (0, 1 or -1); other fields of
                `RECORD_FIELDS` are optional, unknown fields raise ValueError.
        """
        return self.put_many([(key, record)]) == 1

    def put_many(self, items: Iterable[tuple[str, dict]]) -> int:
        """Stores labels in one transaction; returns how many were new."""
        rows = []
        for key, record in items:
            unknown = set(record) - set(RECORD_FIELDS)
            if unknown:
                raise ValueError(f"unknown label record fields {sorted(unknown)}; allowed: {RECORD_FIELDS}.")
            if record.get("preference") not in (0, 1, -1):
                raise ValueError(f"record['preference'] must be 0, 1 or -1, got {record.get('preference')!r}.")
            values = dict(record)
            values.setdefault("created_at", time.time())
            values["malformed"] = int(bool(values.get("malformed", 0)))
            for name, value in values.items():
                if isinstance(value, str):  # lone surrogates from a server must not stop the run
                    values[name] = storable_text(value)
            rows.append((key, *(values.get(f) for f in RECORD_FIELDS)))
        with self._conn:  # one commit for the batch
            before = self._conn.total_changes
            self._conn.executemany(
                f"INSERT OR IGNORE INTO labels (key, {', '.join(RECORD_FIELDS)}) "
                f"VALUES ({', '.join('?' * (len(RECORD_FIELDS) + 1))})",
                rows,
            )
            return self._conn.total_changes - before

    def __len__(self) -> int:
        with self._damage_is_a_store_error():
            return self._conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    def export_jsonl(self, path: str | os.PathLike) -> int:
        """Writes every stored label as one JSON object per line; returns the count."""
        cols = ", ".join(RECORD_FIELDS)
        n = 0
        with open(path, "w") as f:
            for row in self._conn.execute(f"SELECT key, {cols} FROM labels ORDER BY created_at"):
                f.write(json.dumps({"key": row[0], **dict(zip(RECORD_FIELDS, row[1:]))}) + "\n")
                n += 1
        return n

    def close(self) -> None:
        """Closes the file; the store cannot be used afterwards."""
        self._conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
