"""Asking each pair in both image orders: a position preference becomes unsure labels, not wrong ones.

The end-to-end tests drive the real `VLMLabeler` against the loopback server (a real HTTP
server); its position-biased mode answers "0" (the clip shown first) for a share of pairs and
image orders, chosen by a hash of the images as shown, and the truth otherwise.
"""

import dataclasses

import numpy as np
import pytest
import tyro

from plare_jax.labeling import PAIR_FAILED, PAIR_MALFORMED, PAIR_OK, PAIR_UNSURE, PairBatch, VLMConfig, VLMLabeler
from plare_jax.testing.loopback_server import LoopbackBehavior, LoopbackVLMServer, brightness_png
from plare_jax.labeling.report import format_report, labeling_report
from plare_jax.labeling.store import LabelStore
from plare_jax.labeling.vlm import answer_stats, combine_orders

TASK = "open the drawer"
MARGIN = LoopbackBehavior().tie_margin
OK, UN, MAL, FAIL = PAIR_OK, PAIR_UNSURE, PAIR_MALFORMED, PAIR_FAILED


def make_pairs(n: int, ties: int = 0):
    """n distinct image pairs of known brightness (the first `ties` near-equal), and the intended labels."""
    levels = [(10 * i + 5, 10 * i + 7) for i in range(ties)] + [((i * 37) % 256, (i * 101 + 50) % 256) for i in range(n - ties)]
    images = [(brightness_png(a / 255), brightness_png(b / 255)) for a, b in levels]
    gaps = np.array([(b - a) / 255 for a, b in levels])
    return images, np.where(gaps > MARGIN, 1, np.where(gaps < -MARGIN, 0, -1))


def config(server, **kw):
    return VLMConfig(base_url=server.base_url, model=server.model, retry_backoff_s=0.01, **kw)


def swapped(images):
    return [(b, a) for a, b in images]


# ---- the rule, as a pure function

@pytest.mark.parametrize(
    "first, swap, label, status, disagree",
    [
        # (answer, status) to (A, B), then to (B, A) in its own terms (0: B, shown first, is better)
        ((0, OK), (1, OK), 0, OK, False),  # A better in both orders
        ((1, OK), (0, OK), 1, OK, False),  # B better in both orders
        ((0, OK), (0, OK), -1, UN, True),  # "first" both times: the position, not the clips
        ((1, OK), (1, OK), -1, UN, True),  # "second" both times
        ((-1, UN), (1, OK), -1, UN, False),
        ((0, OK), (-1, UN), -1, UN, False),
        ((-1, UN), (-1, UN), -1, UN, False),
        ((0, OK), (-1, MAL), -1, MAL, False),  # one order unanswered: no label from the other alone
        ((-1, MAL), (1, OK), -1, MAL, False),
        ((-1, UN), (-1, MAL), -1, MAL, False),  # the missing answer is counted, even beside an unsure
        ((1, OK), (-1, FAIL), -1, FAIL, False),
        ((-1, UN), (-1, FAIL), -1, FAIL, False),
        ((-1, MAL), (-1, FAIL), -1, FAIL, False),  # failed ranks above malformed
        ((-1, FAIL), (-1, MAL), -1, FAIL, False),
    ],
)  # fmt: skip
def test_combine_orders(first, swap, label, status, disagree):
    prefs, statuses, disagreed = combine_orders([first[0]], [first[1]], [swap[0]], [swap[1]])
    assert (int(prefs[0]), str(statuses[0]), bool(disagreed[0])) == (label, status, disagree)
    assert prefs.dtype == np.int8


def test_answer_stats_count_sure_answers_only():
    stats = answer_stats(np.array([0, 0, 1, -1, -1], np.int8), np.array([OK, OK, OK, UN, MAL]))
    assert stats == {"first_answers": 2, "sure_answers": 3, "first_answer_share": pytest.approx(2 / 3)}
    assert answer_stats(np.array([-1], np.int8), np.array([FAIL]))["first_answer_share"] is None


# ---- end to end

def test_both_orders_of_a_faithful_model_give_its_labels_and_a_balanced_first_share():
    images, intent = make_pairs(16, ties=4)
    with LoopbackVLMServer() as server:
        result = VLMLabeler(config(server, both_orders=True)).label(PairBatch(TASK, images=images), progress=False)
        assert server.counts["stage1"] == 32 and server.counts["stage2"] == 32
    np.testing.assert_array_equal(result.preferences, intent)
    np.testing.assert_array_equal(result.status, np.where(intent == -1, PAIR_UNSURE, PAIR_OK))
    s = result.stats
    assert s["both_orders"] is True and (s["pairs"], s["queries"], s["queried_pairs"]) == (16, 32, 16)
    assert s["requests"] == 64 and s["cache_hits"] == 0
    assert (s["labelled"], s["unsure_answers"], s["unsure"]) == (12, 4, 4)
    # every sure pair said "first" in exactly one of its orders
    assert (s["first_answers"], s["sure_answers"], s["first_answer_share"]) == (12, 24, 0.5)
    assert (s["order_compared"], s["order_agreements"], s["order_disagreements"], s["order_consistency"]) == (12, 12, 0, 1.0)


def test_one_order_reports_first_share_and_no_order_stats():
    images, intent = make_pairs(10, ties=2)
    with LoopbackVLMServer() as server:
        s = VLMLabeler(config(server)).label(PairBatch(TASK, images=images), progress=False).stats
    sure = intent != -1
    assert s["both_orders"] is False and s["queries"] == 10
    assert s["first_answer_share"] == pytest.approx(np.mean(intent[sure] == 0))
    assert "order_consistency" not in s and "order_disagreements" not in s


def test_both_orders_are_cached_per_query(tmp_path):
    images, intent = make_pairs(8, ties=2)
    batch = PairBatch(TASK, images=images)
    with LoopbackVLMServer() as server, LabelStore(tmp_path / "l.sqlite") as store:
        one = VLMLabeler(config(server), store=store)
        one.label(batch, progress=False)  # the (A, B) order only
        both = VLMLabeler(config(server, both_orders=True), store=store)
        first = both.label(batch, progress=False)
        # only the swapped order was new: 8 queries of 2 requests each
        assert (first.stats["cache_hits"], first.stats["requests"], first.stats["queried_pairs"]) == (8, 16, 8)
        assert len(store) == 16
        keys = both.query_keys(batch)
        assert keys[:8] == one.keys(batch) == one.query_keys(batch)
        assert keys[8:] == one.keys(PairBatch(TASK, images=swapped(images)))
        records = store.get_many(keys)
        for i in range(8):  # each order stored with its own answer, in its own terms
            a, b = records[keys[i]]["preference"], records[keys[i + 8]]["preference"]
            assert b == (-1 if a == -1 else 1 - a)
        before = server.counts["requests"]
        again = both.label(batch, progress=False)  # a re-run: both orders from the store
        assert server.counts["requests"] == before
    assert (again.stats["requests"], again.stats["cache_hits"], again.stats["queried_pairs"]) == (0, 16, 0)
    np.testing.assert_array_equal(again.preferences, intent)
    np.testing.assert_array_equal(first.preferences, again.preferences)
    for name in ("first_answers", "sure_answers", "first_answer_share", "order_consistency", "order_disagreements"):
        assert again.stats[name] == first.stats[name], name  # a re-run reports the same answers


def test_a_pair_and_its_swap_in_one_batch_share_their_queries():
    images, intent = make_pairs(4)
    batch = PairBatch(TASK, images=images + swapped(images))
    with LoopbackVLMServer() as server:
        result = VLMLabeler(config(server, both_orders=True)).label(batch, progress=False)
    assert result.stats["requests"] == 16 and result.stats["cache_hits"] == 8  # 8 distinct queries
    np.testing.assert_array_equal(result.preferences, np.concatenate([intent, np.where(intent == -1, -1, 1 - intent)]))


def _wrong_and_accuracy(prefs, intent):
    sure = prefs != -1
    both_sure = sure & (intent != -1)
    return int((sure & (prefs != intent)).sum()), float((prefs[both_sure] == intent[both_sure]).mean())


def test_position_bias_becomes_unsure_labels_with_both_orders():
    images, intent = make_pairs(60, ties=10)
    batch = PairBatch(TASK, images=images)
    biased = LoopbackBehavior(position_bias=0.35)
    with LoopbackVLMServer(behavior=biased) as server:
        single = VLMLabeler(config(server)).label(batch, progress=False)
    with LoopbackVLMServer(behavior=biased) as server:
        both = VLMLabeler(config(server, both_orders=True)).label(batch, progress=False)
        assert server.counts["position_biased"] > 0
    wrong_single, acc_single = _wrong_and_accuracy(single.preferences, intent)
    wrong_both, acc_both = _wrong_and_accuracy(both.preferences, intent)
    # the bias only ever says "first": with one order those answers are wrong labels ...
    assert wrong_single >= 5 and acc_single < 0.95
    assert np.all(single.preferences[single.preferences != intent] != 1)
    # ... with both orders the two answers disagree and the pair is unsure instead
    assert wrong_both < wrong_single and acc_both > acc_single
    assert wrong_both == 0 and acc_both == 1.0
    s = both.stats
    assert s["order_disagreements"] > 0 and s["order_consistency"] < 0.9
    assert s["unsure"] == s["unsure_answers"] == int((both.preferences == -1).sum())
    assert s["first_answer_share"] > 0.55  # the bias shows: a faithful model says "first" half the time
    # the report says the same, with the labeling report's own accuracy
    report = labeling_report(both.preferences, intent, s)
    assert report["accuracy"] == 1.0 and report["order_disagreements"] == s["order_disagreements"]
    assert labeling_report(single.preferences, intent, single.stats)["accuracy"] == pytest.approx(acc_single)
    text = format_report(report)
    assert "named the clip shown first" in text and f"{s['order_disagreements']} pairs made unsure by disagreeing" in text


def test_an_unanswered_order_leaves_the_pair_unanswered_and_is_asked_again(tmp_path):
    images, intent = make_pairs(30, ties=6)
    batch, flipped = PairBatch(TASK, images=images), PairBatch(TASK, images=swapped(images))
    # malformed answers and failed requests, each decided by a hash of the query's content
    faulty = LoopbackBehavior(malformed_fraction=0.25, fault_rate=0.2, fault_kinds=("empty_choices",))
    with LoopbackVLMServer(behavior=faulty) as server:
        ab = VLMLabeler(config(server, max_retries=0)).label(batch, progress=False)
        ba = VLMLabeler(config(server, max_retries=0)).label(flipped, progress=False)
    with LabelStore(tmp_path / "l.sqlite") as store:
        with LoopbackVLMServer(behavior=faulty) as server:
            both = VLMLabeler(config(server, max_retries=0, both_orders=True), store=store).label(batch, progress=False)
        expected = combine_orders(ab.preferences, ab.status, ba.preferences, ba.status)
        np.testing.assert_array_equal(both.preferences, expected[0])
        np.testing.assert_array_equal(both.status, expected[1])
        assert both.stats["failed"] > 0 and both.stats["malformed"] > 0 and both.stats["labelled"] > 0
        answered = int((ab.status == OK).sum() + (ab.status == UN).sum() + (ba.status == OK).sum() + (ba.status == UN).sum())
        assert len(store) == answered  # every answered order is stored, the pair's label or not
        with LoopbackVLMServer() as server:
            again = VLMLabeler(config(server, both_orders=True), store=store).label(batch, progress=False)
            assert server.counts["requests"] == 2 * (60 - answered)  # only the unanswered orders
    np.testing.assert_array_equal(again.preferences, intent)


def test_chunk_stats_merge_into_the_whole_runs_shares():
    from plare_jax.pipeline.labels import merge_stats

    images, _ = make_pairs(40, ties=6)
    with LoopbackVLMServer(behavior=LoopbackBehavior(position_bias=0.3)) as server:
        labeler = VLMLabeler(config(server, both_orders=True))
        chunks = [labeler.label(PairBatch(TASK, images=images[i:i + 15]), progress=False).stats for i in (0, 15, 30)]
        whole = labeler.label(PairBatch(TASK, images=images), progress=False).stats
    merged = merge_stats(chunks)
    for name in ("pairs", "queries", "first_answers", "sure_answers", "order_compared", "order_agreements",
                 "order_disagreements", "labelled", "unsure"):  # fmt: skip
        assert merged[name] == whole[name], name
    # shares recomputed from the summed counts (not summed, not the first chunk's)
    assert merged["first_answer_share"] == pytest.approx(whole["first_answer_share"])
    assert merged["order_consistency"] == pytest.approx(whole["order_consistency"])
    assert merged["first_answer_share"] != chunks[0]["first_answer_share"]
    assert merge_stats([{**chunks[0], "sure_answers": 0, "first_answers": 0}])["first_answer_share"] is None


def test_both_orders_is_a_cli_option_passed_to_the_labeler():
    from plare_jax.pipeline.config import ExperimentConfig, VLMOptions
    from plare_jax.pipeline.labels import vlm_config

    assert VLMOptions().both_orders is False and VLMConfig().both_orders is False
    parsed = tyro.cli(ExperimentConfig, args=["--vlm.both-orders"])
    assert parsed.vlm.both_orders is True
    assert vlm_config(parsed, "http://127.0.0.1:9/v1").both_orders is True
    default = dataclasses.replace(ExperimentConfig(), vlm=VLMOptions())
    assert vlm_config(default, "http://127.0.0.1:9/v1").both_orders is False


def test_both_orders_does_not_change_a_querys_cache_key():
    images, _ = make_pairs(3)
    batch = PairBatch(TASK, images=images)
    base = VLMConfig(base_url="http://127.0.0.1:9/v1")
    assert VLMLabeler(dataclasses.replace(base, both_orders=True)).keys(batch) == VLMLabeler(base).keys(batch)
