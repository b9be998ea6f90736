"""Tests of the content-addressed SQLite label store."""

import sqlite3

import pytest

from plare_jax.labeling import LabelStore, label_key

KEY_ARGS = dict(prompt_version="v1", model="m", task_text="open the drawer")


def test_label_key_is_content_addressed_and_order_sensitive():
    k = label_key(b"A", b"B", **KEY_ARGS)
    assert k == label_key(b"A", b"B", **KEY_ARGS)
    assert len(k) == 64
    assert k != label_key(b"B", b"A", **KEY_ARGS)
    assert k != label_key(b"A", b"B", **{**KEY_ARGS, "prompt_version": "v2"})
    assert k != label_key(b"A", b"B", **{**KEY_ARGS, "model": "other"})
    assert k != label_key(b"A", b"B", **{**KEY_ARGS, "task_text": "open the door of the safe"})
    # field boundaries matter: moving a byte between the images is a different query
    assert label_key(b"AB", b"C", **KEY_ARGS) != label_key(b"A", b"BC", **KEY_ARGS)


def test_store_put_get_no_duplicates_and_persistence(tmp_path):
    path = tmp_path / "sub" / "labels.sqlite"
    with LabelStore(path) as store:
        assert store.journal_mode == "wal"
        assert store.put("k1", {"preference": 1, "stage1_text": "why", "prompt_tokens": 10})
        assert not store.put("k1", {"preference": 0})  # INSERT OR IGNORE: first label wins
        assert store.put_many([("k2", {"preference": -1, "malformed": True}), ("k1", {"preference": 0})]) == 1
        assert len(store) == 2
    with LabelStore(path) as store:
        got = store.get_many(["k1", "k2", "missing"])
        assert set(got) == {"k1", "k2"}
        assert got["k1"]["preference"] == 1 and got["k1"]["stage1_text"] == "why"
        assert got["k2"]["malformed"] == 1
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"  # WAL is persistent in the file


def test_store_rejects_bad_records(tmp_path):
    with LabelStore(tmp_path / "l.sqlite") as store:
        with pytest.raises(ValueError, match="preference"):
            store.put("k", {"preference": 2})
        with pytest.raises(ValueError, match="unknown"):
            store.put("k", {"preference": 1, "api_key": "secret"})
        assert len(store) == 0


def test_store_get_many_handles_many_keys(tmp_path):
    with LabelStore(tmp_path / "l.sqlite") as store:
        store.put_many((f"k{i}", {"preference": i % 2}) for i in range(1200))
        got = store.get_many(f"k{i}" for i in range(0, 1300, 1))
        assert len(got) == 1200 and got["k7"]["preference"] == 1
        out = tmp_path / "labels.jsonl"
        assert store.export_jsonl(out) == 1200


def test_label_key_settings_extend_the_key_and_none_keeps_the_old_one():
    old = label_key(b"A", b"B", **KEY_ARGS)
    assert label_key(b"A", b"B", **KEY_ARGS, settings=None) == old  # stores written without settings still match
    with_settings = label_key(b"A", b"B", **KEY_ARGS, settings={"temperature": 0.0, "max_tokens": 1024})
    assert with_settings != old
    assert label_key(b"A", b"B", **KEY_ARGS, settings={"max_tokens": 1024, "temperature": 0.0}) == with_settings
    assert label_key(b"A", b"B", **KEY_ARGS, settings={"temperature": 0.0, "max_tokens": 512}) != with_settings


def test_store_keeps_text_with_lone_surrogates(tmp_path):
    with LabelStore(tmp_path / "l.sqlite") as store:
        assert store.put("k", {"preference": 0, "stage1_text": "seen \ud800", "stage2_text": "0\udc80"})
        got = store.get_many(["k"])["k"]
    assert got["stage2_text"] == "0\\udc80" and got["stage1_text"] == "seen \\ud800"
