"""Tests of the VLM labeler against the loopback OpenAI-compatible server (a real HTTP server)."""

import time

import numpy as np
import pytest

from plare_jax.labeling import (
    Labeler,
    PairBatch,
    ScriptedTeacher,
    VLMConfig,
    VLMEndpointError,
    VLMLabeler,
    check_endpoint,
    labeling_report,
    parse_choice,
)
from plare_jax.testing.loopback_server import LoopbackBehavior, LoopbackVLMServer, brightness_png
from plare_jax.labeling.store import LabelStore

TASK = "open the drawer"
MARGIN = LoopbackBehavior().tie_margin


def make_pairs(n: int):
    """n distinct image pairs of known brightness, and their brightness as 'returns' [n, 2]."""
    levels = np.array([[(i * 37) % 256, (i * 101 + 50) % 256] for i in range(n)]) / 255.0
    images = [(brightness_png(a), brightness_png(b)) for a, b in levels]
    return images, levels


def fast_config(server, **kw):
    return VLMConfig(base_url=server.base_url, model=server.model, retry_backoff_s=0.01, **kw)


def test_valid_answers_agree_with_teacher_on_content():
    images, levels = make_pairs(24)
    with LoopbackVLMServer() as server:
        result = VLMLabeler(fast_config(server)).label(PairBatch(TASK, images=images), progress=False)
        assert server.counts["stage1"] == 24 and server.counts["stage2"] == 24
    teacher = ScriptedTeacher(equal_threshold=MARGIN).label(PairBatch(TASK, scores=levels)).preferences
    report = labeling_report(result.preferences, teacher, result.stats)
    assert report["accuracy"] == 1.0 and report["both_sure"] > 15
    np.testing.assert_array_equal(result.preferences, teacher)
    s = result.stats
    assert s["requests"] == 48 and s["retries"] == 0 and s["malformed"] == 0 and s["cache_hits"] == 0
    assert s["prompt_tokens"] > 0 and s["completion_tokens"] > 0
    assert 0 <= s["latency_p50_s"] <= s["latency_p90_s"] <= s["latency_p99_s"]
    assert result.preferences.dtype == np.int8
    # how often the model named the clip shown first, over its sure answers (one order: the data's balance)
    sure = teacher != -1
    assert s["first_answer_share"] == pytest.approx(np.mean(teacher[sure] == 0))
    assert (s["sure_answers"], s["queries"], s["both_orders"]) == (int(sure.sum()), 24, False)
    assert "order_consistency" not in s  # asked in one order: nothing to compare


def test_unstructured_server_answers_are_parsed():
    images, levels = make_pairs(8)
    behavior = LoopbackBehavior(ignore_structured_output=True)
    with LoopbackVLMServer(behavior=behavior) as server:
        verbose = VLMLabeler(fast_config(server)).label(PairBatch(TASK, images=images), progress=False)
    teacher = ScriptedTeacher(equal_threshold=MARGIN).label(PairBatch(TASK, scores=levels)).preferences
    np.testing.assert_array_equal(verbose.preferences, teacher)
    assert verbose.stats["malformed"] == 0


def test_malformed_answers_become_unsure_and_are_counted():
    images, _ = make_pairs(40)
    with LoopbackVLMServer(behavior=LoopbackBehavior(malformed_fraction=0.5)) as server:
        result = VLMLabeler(fast_config(server, max_retries=2)).label(PairBatch(TASK, images=images), progress=False)
    s = result.stats
    assert 5 <= s["malformed"] <= 35  # about half, decided by content hash
    assert np.sum(result.preferences == -1) >= s["malformed"]
    # each malformed pair: 1 stage-1 + 3 stage-2 tries (2 re-asks)
    assert s["requests"] == 2 * 40 + 2 * s["malformed"]
    assert s["retries"] == 2 * s["malformed"]


@pytest.mark.parametrize("status", [500, 429])
def test_http_errors_are_retried_then_succeed(status):
    images, levels = make_pairs(6)
    behavior = LoopbackBehavior(fail_first_k=2, fail_status=status)
    with LoopbackVLMServer(behavior=behavior) as server:
        result = VLMLabeler(fast_config(server, max_retries=3)).label(PairBatch(TASK, images=images), progress=False)
        assert server.counts["errors"] == 2 * 12
    teacher = ScriptedTeacher(equal_threshold=MARGIN).label(PairBatch(TASK, scores=levels)).preferences
    np.testing.assert_array_equal(result.preferences, teacher)
    assert result.stats["retries"] == 24 and result.stats["requests"] == 36 and result.stats["failed"] == 0


def test_errors_beyond_retries_leave_pair_unsure_and_unstored(tmp_path):
    images, _ = make_pairs(3)
    behavior = LoopbackBehavior(fail_first_k=10)
    with LoopbackVLMServer(behavior=behavior) as server, LabelStore(tmp_path / "l.sqlite") as store:
        result = VLMLabeler(fast_config(server, max_retries=1), store=store).label(
            PairBatch(TASK, images=images), progress=False
        )
        assert np.all(result.preferences == -1)
        assert result.stats["failed"] == 3
        assert len(store) == 0  # a re-run asks again


def test_hung_request_times_out_is_retried_and_run_continues():
    images, levels = make_pairs(6)
    # first try of every request hangs past the client timeout; the retry answers
    behavior = LoopbackBehavior(hang_first_k=1, hang_s=120.0)
    with LoopbackVLMServer(behavior=behavior) as server:
        result = VLMLabeler(fast_config(server, timeout_s=1.0)).label(PairBatch(TASK, images=images), progress=False)
        counts = server.counts
    teacher = ScriptedTeacher(equal_threshold=MARGIN).label(PairBatch(TASK, scores=levels)).preferences
    np.testing.assert_array_equal(result.preferences, teacher)
    # 12 distinct requests, each hung on its first try; a loaded machine may time out a slow
    # answer too, so at least (not exactly) 12 retries
    assert result.stats["retries"] >= 12 and counts["hung"] == 12
    # The labels came back while all 12 hung requests were still held by the server
    # (released when it stops): the client did not wait for them.
    assert counts["in_flight"] == 12, counts


def test_always_hung_pairs_become_unsure_others_labelled():
    images, levels = make_pairs(20)
    # Hung requests wait far past the timeout (released when the server stops); the timeout leaves
    # a loaded machine seconds for the normal answers (at 0.3 s every request timed out under load).
    behavior = LoopbackBehavior(hang_fraction=0.3, hang_s=60.0)
    with LoopbackVLMServer(behavior=behavior) as server:
        result = VLMLabeler(fast_config(server, timeout_s=2.0, max_retries=1)).label(
            PairBatch(TASK, images=images), progress=False
        )
    failed = result.stats["failed"]
    assert 1 <= failed <= 15
    teacher = ScriptedTeacher(equal_threshold=MARGIN).label(PairBatch(TASK, scores=levels)).preferences
    answered = result.preferences != -1
    np.testing.assert_array_equal(result.preferences[answered], teacher[answered])
    assert answered.sum() >= 20 - failed - np.sum(teacher == -1)


def test_store_reuse_second_run_sends_no_request(tmp_path):
    images, _ = make_pairs(10)
    with LoopbackVLMServer() as server, LabelStore(tmp_path / "l.sqlite") as store:
        labeler = VLMLabeler(fast_config(server), store=store)
        first = labeler.label(PairBatch(TASK, images=images), progress=False)
        before = server.counts["requests"]
        second = labeler.label(PairBatch(TASK, images=images), progress=False)
        assert server.counts["requests"] == before
        assert second.stats["requests"] == 0 and second.stats["cache_hits"] == 10
        np.testing.assert_array_equal(first.preferences, second.preferences)
        record = next(iter(store.get_many(labeler.keys(PairBatch(TASK, images=images[:1]))).values()))
        assert "brightness" in record["stage1_text"] and record["stage2_text"] in ("0", "1", "-1")
        assert record["prompt_tokens"] > 0 and record["latency_s"] > 0
        # swapped pairs and another task text are new queries
        swapped = [(b, a) for a, b in images[:3]]
        third = labeler.label(PairBatch(TASK, images=swapped), progress=False)
        assert third.stats["cache_hits"] == 0 and third.stats["requests"] == 6
        assert len(store) == 13


def test_concurrency_is_what_the_server_sees_in_flight():
    # Throughput is measured by benchmarks/labeling.py; here, without a clock: with C pairs in
    # flight the server sees exactly C requests at once (a pair's two stages run in turn), and
    # with C = 1 never more than one.
    latency, concurrency, n_pairs = 0.05, 16, 64
    images, _ = make_pairs(n_pairs)
    gate = LoopbackBehavior(latency_s=latency, hold_until_in_flight=concurrency, hold_timeout_s=60)
    with LoopbackVLMServer(behavior=gate) as server:
        fast = VLMLabeler(fast_config(server, concurrency=concurrency)).label(PairBatch(TASK, images=images), progress=False)
        counts = server.counts
    assert counts["max_in_flight"] == concurrency and counts["gate_timeouts"] == 0, counts
    assert fast.stats["requests"] == 2 * n_pairs and fast.stats["latency_p50_s"] >= latency
    with LoopbackVLMServer(behavior=LoopbackBehavior(latency_s=latency)) as server:
        VLMLabeler(fast_config(server, concurrency=1)).label(PairBatch(TASK, images=images[:8]), progress=False)
        assert server.counts["max_in_flight"] == 1


def test_check_endpoint_reports_unreachable_and_wrong_model():
    with LoopbackVLMServer() as server:
        check_endpoint(fast_config(server))
        with pytest.raises(VLMEndpointError, match="does not serve"):
            check_endpoint(VLMConfig(base_url=server.base_url, model="other/model"))
        url = server.base_url
    with pytest.raises(VLMEndpointError, match="cannot reach"):
        check_endpoint(VLMConfig(base_url=url), timeout_s=2)


def test_wrong_model_aborts_labeling_with_clear_error():
    images, _ = make_pairs(2)
    with LoopbackVLMServer() as server:
        labeler = VLMLabeler(VLMConfig(base_url=server.base_url, model="not/served"))
        with pytest.raises(VLMEndpointError, match="model"):
            labeler.label(PairBatch(TASK, images=images), progress=False)


def test_base_url_from_environment_or_clear_error(monkeypatch):
    monkeypatch.delenv("PLARE_VLM_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="PLARE_VLM_BASE_URL"):
        VLMConfig().resolved_base_url()
    monkeypatch.setenv("PLARE_VLM_BASE_URL", "http://127.0.0.1:9/v1/")
    assert VLMConfig().resolved_base_url() == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert VLMConfig().api_key() == "EMPTY"
    monkeypatch.setenv("MY_KEY", "sk-test")
    config = VLMConfig(api_key_env="MY_KEY")
    assert config.api_key() == "sk-test" and "sk-test" not in repr(config)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1", 1), ("0", 0), ("-1", -1), (" '0'\n", 0), ("The answer is 1.", 1), ("Answer: -1", -1),
        ("**1**", 1), ("Video 2 is better, so 1", 1), ("Video 1 is better", None), ("The answer is -1 since", -1), ("either 0 or 1", None), ("no idea", None),
        ("10", None), ("0.5", None), ("", None), (None, None),
    ],
)  # fmt: skip
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def test_unknown_prompt_version_is_a_clear_error():
    with pytest.raises(ValueError, match="stage1_v999"):
        VLMLabeler(VLMConfig(base_url="http://127.0.0.1:9/v1", prompt_version="v999"))


def test_client_keeps_128_slow_requests_in_flight_at_once():
    n_pairs = 128
    images, _ = make_pairs(n_pairs)
    # The server holds every request until 128 are in flight at once: a client with less
    # concurrency (e.g. one that awaited each pair in turn) times the gate out instead.
    behavior = LoopbackBehavior(latency_s=0.2, hold_until_in_flight=n_pairs, hold_timeout_s=60)
    with LoopbackVLMServer(behavior=behavior) as server:
        labeler = VLMLabeler(fast_config(server, concurrency=128))
        assert isinstance(labeler, Labeler)
        result = labeler.label(PairBatch(TASK, images=images), progress=True)
        counts = server.counts
    assert counts["requests"] == 2 * n_pairs
    assert counts["max_in_flight"] == n_pairs and counts["gate_timeouts"] == 0, counts
    s = result.stats
    assert s["retries"] == 0 and s["failed"] == 0 and s["requests"] == 2 * n_pairs


def test_rate_limit_retry_after_header_is_honoured():
    images, _ = make_pairs(1)
    behavior = LoopbackBehavior(fail_first_k=1, fail_status=429, retry_after_s=0.6)
    with LoopbackVLMServer(behavior=behavior) as server:
        start = time.perf_counter()
        result = VLMLabeler(fast_config(server)).label(PairBatch(TASK, images=images), progress=False)
        elapsed = time.perf_counter() - start
    assert result.stats["retries"] == 2 and result.stats["failed"] == 0
    assert elapsed >= 1.2  # two waits of 0.6 s, although our own backoff is 0.01 s
