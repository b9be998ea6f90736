"""A labeling run killed with SIGKILL mid-way resumes without losing or duplicating labels."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from plare_jax.labeling import PairBatch, VLMConfig, VLMLabeler
from plare_jax.testing.loopback_server import LoopbackBehavior, LoopbackVLMServer, brightness_png
from plare_jax.labeling.store import LabelStore

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PAIRS = 48
TASK = "open the drawer"

CHILD = textwrap.dedent(
    """
    import sys
    from plare_jax.labeling import PairBatch, VLMConfig, VLMLabeler
    from plare_jax.testing.loopback_server import brightness_png
    from plare_jax.labeling.store import LabelStore

    base_url, db, n, TASK = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    images = [(brightness_png(((i * 37) % 256) / 255), brightness_png(((i * 101 + 50) % 256) / 255)) for i in range(n)]
    with LabelStore(db) as store:
        VLMLabeler(VLMConfig(base_url=base_url, concurrency=4), store=store).label(PairBatch(TASK, images=images), progress=False)
    """
)


def _stored_count(db) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_labels_every_pair_once(tmp_path):
    db = tmp_path / "labels.sqlite"
    images = [(brightness_png(((i * 37) % 256) / 255), brightness_png(((i * 101 + 50) % 256) / 255)) for i in range(N_PAIRS)]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    with LoopbackVLMServer(behavior=LoopbackBehavior(latency_s=0.1)) as server:
        child = subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, str(db), str(N_PAIRS), TASK], env=env)
        deadline = time.monotonic() + 60
        while _stored_count(db) < 10:
            assert child.poll() is None, "labeling subprocess exited before it was killed"
            assert time.monotonic() < deadline, "labeling subprocess stored no labels in 60 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL

        stored_before = _stored_count(db)
        assert 10 <= stored_before < N_PAIRS  # killed mid-way
        with LabelStore(db) as store:
            labeler = VLMLabeler(VLMConfig(base_url=server.base_url, concurrency=8), store=store)
            served_before = server.counts["requests"]
            result = labeler.label(PairBatch(TASK, images=images), progress=False)
            missing = N_PAIRS - stored_before
            # requests only for the missing pairs (2 per pair, no retries on this server)
            assert result.stats["cache_hits"] == stored_before
            assert result.stats["requests"] == 2 * missing
            assert server.counts["requests"] - served_before == 2 * missing
            assert len(store) == N_PAIRS
            keys = labeler.keys(PairBatch(TASK, images=images))
            assert len(store.get_many(keys)) == N_PAIRS
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n_rows, n_keys = conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM labels").fetchone()
    assert n_rows == n_keys == N_PAIRS
    assert np.all(np.isin(result.preferences, (0, 1, -1)))
