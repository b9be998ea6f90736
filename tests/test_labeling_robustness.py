"""What a VLM server can do wrong, and what the labeler must make of it (issue 9).

Every test drives the real `VLMLabeler` against the loopback server (a real HTTP server on
127.0.0.1) configured to misbehave in one way: broken bodies end as counted per-pair
failures, never as an exception out of the run; failed and malformed pairs are not stored;
a configuration error stops the run at once with the server's message.
"""

import numpy as np
import pytest

from plare_jax.labeling import (
    PAIR_FAILED,
    PAIR_MALFORMED,
    PAIR_OK,
    PAIR_UNSURE,
    LabelCoverageError,
    LabelResult,
    PairBatch,
    VLMConfig,
    VLMConfigError,
    VLMLabeler,
    check_label_coverage,
    format_report,
    label_coverage,
    labeling_report,
    preflight,
)
from plare_jax.testing.loopback_server import FAULT_KINDS, LoopbackBehavior, LoopbackVLMServer, brightness_png
from plare_jax.labeling.store import LabelStore
from plare_jax.labeling.vlm import load_prompts, stage1_content, structured_output_mode_for_version

TASK = "open the drawer"
MARGIN = LoopbackBehavior().tie_margin
# Faults after which a request has no usable answer (the pair fails once the retries are spent).
BROKEN_BODY_FAULTS = ("http_error", "drop_connection", "random_bytes", "invalid_utf8", "truncated_json",
                      "huge_body", "empty_choices", "null_content", "wrong_types", "stall")  # fmt: skip


def make_pairs(n: int, ties: int = 0):
    """n distinct image pairs of known brightness (the first `ties` near-equal), and the intended labels."""
    levels = [((i * 37) % 256, (i * 101 + 50) % 256) for i in range(n - ties)]
    levels = [(10 * i + 5, 10 * i + 7) for i in range(ties)] + levels
    images = [(brightness_png(a / 255), brightness_png(b / 255)) for a, b in levels]
    gaps = np.array([(b - a) / 255 for a, b in levels])
    intent = np.where(gaps > MARGIN, 1, np.where(gaps < -MARGIN, 0, -1))
    return images, intent


def config(server, **kw):
    return VLMConfig(base_url=server.base_url, model=server.model, retry_backoff_s=0.01, **kw)


@pytest.mark.parametrize("fault", BROKEN_BODY_FAULTS)
def test_every_broken_answer_ends_as_a_counted_failure_and_is_asked_again(tmp_path, fault):
    images, intent = make_pairs(4)
    batch = PairBatch(TASK, images=images)
    broken = LoopbackBehavior(fault_rate=1.0, fault_kinds=(fault,), hang_s=30.0, huge_body_chars=200_000)
    with LabelStore(tmp_path / "l.sqlite") as store:
        with LoopbackVLMServer(behavior=broken) as server:
            result = VLMLabeler(config(server, max_retries=1, timeout_s=0.5), store=store).label(batch, progress=False)
            assert server.faults == {fault: 8}  # 4 pairs x 2 tries of stage 1, all broken
        assert list(result.status) == [PAIR_FAILED] * 4
        assert np.all(result.preferences == -1)
        assert result.stats["failed"] == 4 and result.stats["requests"] == 8
        assert len(store) == 0  # nothing stored: a re-run asks again
        with LoopbackVLMServer() as server:
            again = VLMLabeler(config(server), store=store).label(batch, progress=False)
        np.testing.assert_array_equal(again.preferences, intent)
        assert again.stats["cache_hits"] == 0 and list(again.status) == [PAIR_OK] * 4


@pytest.mark.parametrize("fault", ["unicode_answer", "lone_surrogate", "same_answer_twice"])
def test_odd_but_readable_answers_give_the_intended_label(tmp_path, fault):
    images, intent = make_pairs(24, ties=8)
    behavior = LoopbackBehavior(fault_rate=1.0, fault_kinds=(fault,))
    with LoopbackVLMServer(behavior=behavior) as server, LabelStore(tmp_path / "l.sqlite") as store:
        labeler = VLMLabeler(config(server), store=store)
        result = labeler.label(PairBatch(TASK, images=images), progress=False)
        records = store.get_many(labeler.keys(PairBatch(TASK, images=images)))
    np.testing.assert_array_equal(result.preferences, intent)  # "−1" / "- 1" stay unsure, never 1
    assert result.stats["failed"] == 0 and result.stats["malformed"] == 0
    assert result.stats["unsure_answers"] == 8 and len(records) == 24
    if fault == "lone_surrogate":
        texts = [r["stage1_text"] + r["stage2_text"] for r in records.values()]
        assert all("\\udc80" in t for t in texts)  # stored escaped, not lost and not crashing SQLite


def test_two_different_answers_are_malformed_not_stored_and_asked_again(tmp_path):
    images, intent = make_pairs(12, ties=4)
    batch = PairBatch(TASK, images=images)
    with LabelStore(tmp_path / "l.sqlite") as store:
        behavior = LoopbackBehavior(fault_rate=1.0, fault_kinds=("two_answers",))
        with LoopbackVLMServer(behavior=behavior) as server:
            result = VLMLabeler(config(server, max_retries=2), store=store).label(batch, progress=False)
        assert list(result.status) == [PAIR_MALFORMED] * 12 and np.all(result.preferences == -1)
        assert result.stats["malformed"] == 12 and result.stats["requests"] == 12 * (1 + 3)
        assert len(store) == 0
        with LoopbackVLMServer() as server:
            again = VLMLabeler(config(server), store=store).label(batch, progress=False)
            assert server.counts["requests"] == 24  # every pair asked again
        np.testing.assert_array_equal(again.preferences, intent)


def test_trickling_body_is_cut_at_the_deadline_and_retried():
    images, intent = make_pairs(2)
    # every body arrives in small pieces over 4 s: each read is quick, the whole answer is not
    behavior = LoopbackBehavior(fault_rate=1.0, fault_kinds=("trickle",), trickle_s=4.0)
    with LoopbackVLMServer(behavior=behavior) as server:
        result = VLMLabeler(config(server, timeout_s=0.5, max_retries=1)).label(PairBatch(TASK, images=images), progress=False)
        counts = server.counts
    assert list(result.status) == [PAIR_FAILED] * 2
    assert counts.get("trickle_completed", 0) == 0  # the client never sat through a trickle


def test_short_trickle_is_read_whole():
    images, intent = make_pairs(4)
    behavior = LoopbackBehavior(fault_rate=1.0, fault_kinds=("trickle",), trickle_s=0.2)
    with LoopbackVLMServer(behavior=behavior) as server:
        result = VLMLabeler(config(server, timeout_s=5.0)).label(PairBatch(TASK, images=images), progress=False)
    np.testing.assert_array_equal(result.preferences, intent)


def test_statuses_and_stats_count_each_kind(tmp_path):
    images, intent = make_pairs(10, ties=3)
    with LoopbackVLMServer() as server:
        result = VLMLabeler(config(server)).label(PairBatch(TASK, images=images), progress=False)
    expected = np.where(intent == -1, PAIR_UNSURE, PAIR_OK)
    np.testing.assert_array_equal(result.status, expected)
    s = result.stats
    assert (s["labelled"], s["unsure_answers"], s["malformed"], s["failed"], s["unsure"]) == (7, 3, 0, 0, 3)


def test_cache_key_covers_every_setting_that_changes_the_answer():
    images, _ = make_pairs(1)
    batch = PairBatch(TASK, images=images)
    base = VLMConfig(base_url="http://127.0.0.1:9/v1")
    key = VLMLabeler(base).keys(batch)[0]
    assert VLMLabeler(base).keys(batch)[0] == key
    for change in (dict(temperature=0.7), dict(max_tokens=512), dict(structured_output=False),
                   dict(num_keyframes=4), dict(prompt_version="v1"), dict(model="other/model")):  # fmt: skip
        other = VLMConfig(**{**base.__dict__, **change})
        assert VLMLabeler(other).keys(batch)[0] != key, change
    # the prompt text itself, not only its version name
    edited = VLMLabeler(base)
    edited.stage1_template += " Be brief."
    assert edited.keys(batch)[0] != key
    # settings that cannot change an answer keep the key
    assert VLMLabeler(VLMConfig(**{**base.__dict__, "concurrency": 3, "timeout_s": 5.0})).keys(batch)[0] == key


def test_stored_malformed_row_of_an_older_store_is_asked_again(tmp_path):
    images, intent = make_pairs(2)
    batch = PairBatch(TASK, images=images)
    with LoopbackVLMServer() as server, LabelStore(tmp_path / "l.sqlite") as store:
        labeler = VLMLabeler(config(server), store=store)
        store.put(labeler.keys(batch)[0], {"preference": -1, "malformed": True})
        result = labeler.label(batch, progress=False)
        assert result.stats["cache_hits"] == 0 and server.counts["stage1"] == 2
    np.testing.assert_array_equal(result.preferences, intent)


# ---- configuration errors: stop at once, with the server's message

NOT_MULTIMODAL = "Qwen2ForCausalLM is not a multimodal model"


def test_text_only_model_stops_the_run_at_once_with_the_servers_message():
    images, _ = make_pairs(64)
    with LoopbackVLMServer(behavior=LoopbackBehavior(reject_images_message=NOT_MULTIMODAL)) as server:
        with pytest.raises(VLMConfigError, match="not a multimodal model") as err:
            VLMLabeler(config(server, concurrency=4)).label(PairBatch(TASK, images=images), progress=False)
        assert server.counts["requests"] <= 4  # the first answers stop it: no retries, no other pairs
    assert "vision-language model" in str(err.value)


def test_too_few_images_per_prompt_stops_the_run_with_the_fix():
    images, _ = make_pairs(8)
    with LoopbackVLMServer(behavior=LoopbackBehavior(max_images=1)) as server:
        with pytest.raises(VLMConfigError, match="At most 1 image") as err:
            VLMLabeler(config(server, concurrency=2)).label(PairBatch(TASK, images=images), progress=False)
    assert "--limit-mm-per-prompt" in str(err.value)


def test_preflight_catches_configuration_errors_before_any_data_work():
    with LoopbackVLMServer() as server:
        info = preflight(config(server))
        assert info["structured_output_mode"] == "structured_outputs" and server.counts["stage1"] == 1
        parts = server.last_stage1_parts
        assert [kind for kind, _ in parts] == ["text", "image", "text", "image", "text"]
    with LoopbackVLMServer(behavior=LoopbackBehavior(reject_images_message=NOT_MULTIMODAL)) as server:
        with pytest.raises(VLMConfigError, match="not a multimodal model"):
            preflight(config(server))
        assert server.counts["requests"] == 1
    with LoopbackVLMServer(behavior=LoopbackBehavior(max_images=1)) as server:
        with pytest.raises(VLMConfigError, match="limit-mm-per-prompt"):
            preflight(config(server))
    # any other 4xx to the test request is a configuration error too
    with LoopbackVLMServer(behavior=LoopbackBehavior(fail_first_k=5, fail_status=422)) as server:
        with pytest.raises(VLMConfigError, match="422"):
            preflight(config(server))


def test_other_client_errors_fail_only_their_pair():
    images, _ = make_pairs(6)
    with LoopbackVLMServer(behavior=LoopbackBehavior(fail_first_k=5, fail_status=422)) as server:
        result = VLMLabeler(config(server)).label(PairBatch(TASK, images=images), progress=False)
    assert list(result.status) == [PAIR_FAILED] * 6


# ---- the coverage gate


def test_every_pair_failing_trips_the_coverage_gate_with_counts():
    images, _ = make_pairs(10)
    behavior = LoopbackBehavior(fail_first_k=99, fail_status=400)
    with LoopbackVLMServer(behavior=behavior) as server:
        result = VLMLabeler(config(server)).label(PairBatch(TASK, images=images), progress=False)
    with pytest.raises(LabelCoverageError, match=r"10 of 10 pairs \(100.0%\) got no label.*10 failed") as err:
        check_label_coverage(result)
    assert err.value.counts["failed"] == 10
    assert "most common failures: 10x HTTP 400: injected HTTP 400" in str(err.value)  # the server's own words
    assert result.stats["failure_reasons"] == {"HTTP 400: injected HTTP 400": 10}
    report = labeling_report(result.preferences, np.zeros(10, np.int8), result.stats)
    assert "failed 10x: HTTP 400: injected HTTP 400" in format_report(report)
    assert label_coverage(result.stats) == err.value.counts


@pytest.mark.parametrize(
    "failed, malformed, limit, trips",
    [(0, 0, 0.1, False), (5, 5, 0.1, False), (6, 5, 0.1, True), (0, 11, 0.1, True), (50, 0, 0.5, False),
     (51, 0, 0.5, True), (1, 0, 0.0, True), (100, 0, 1.0, False)],
)  # fmt: skip
def test_check_label_coverage_threshold(failed, malformed, limit, trips):
    stats = {"pairs": 100, "failed": failed, "malformed": malformed, "unsure": 40}
    if trips:
        with pytest.raises(LabelCoverageError, match="--max-unlabeled-fraction"):
            check_label_coverage(stats, max_unlabeled_fraction=limit)
    else:
        assert check_label_coverage(stats, max_unlabeled_fraction=limit)["unlabeled"] == failed + malformed


def test_coverage_reads_statuses_and_ignores_scripted_stats():
    status = np.array([PAIR_OK, PAIR_UNSURE, PAIR_FAILED, PAIR_MALFORMED])
    result = LabelResult(preferences=np.array([1, -1, -1, -1], np.int8), stats={}, status=status)
    assert label_coverage(result)["unlabeled"] == 2
    with pytest.raises(LabelCoverageError):
        check_label_coverage(result, max_unlabeled_fraction=0.25)
    assert check_label_coverage({"pairs": 5, "unsure": 5})["unlabeled"] == 0  # the scripted teacher always answers
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_label_coverage(result, max_unlabeled_fraction=1.5)


# ---- structured output: send only the key the server honours


@pytest.mark.parametrize(
    "behavior, mode",
    [
        (LoopbackBehavior(version="0.32.0", honoured_keys=("structured_outputs",)), "structured_outputs"),
        (LoopbackBehavior(version="0.8.5", honoured_keys=("guided_choice",)), "guided_choice"),
        (LoopbackBehavior(version="0.11.0", honoured_keys=("structured_outputs", "guided_choice")), "structured_outputs"),
        # no /version (not vLLM): the current key, then what the server's 400 asks for
        (LoopbackBehavior(version=None, honoured_keys=("guided_choice",), reject_unknown_keys=True), "guided_choice"),
        (LoopbackBehavior(version=None, honoured_keys=(), reject_unknown_keys=True), "none"),
    ],
)
def test_structured_output_key_matches_the_server(tmp_path, behavior, mode):
    images, intent = make_pairs(12, ties=3)
    with LoopbackVLMServer(behavior=behavior) as server, LabelStore(tmp_path / "l.sqlite") as store:
        labeler = VLMLabeler(config(server, concurrency=4), store=store)
        result = labeler.label(PairBatch(TASK, images=images), progress=False)
        counts = server.counts
        records = store.get_many(labeler.keys(PairBatch(TASK, images=images)))
    np.testing.assert_array_equal(result.preferences, intent)
    assert result.stats["structured_output_mode"] == mode == labeler.structured_mode
    assert counts.get("ignored_structured_keys", 0) == 0  # no per-request warning on the server
    assert counts.get("version_requests", 0) == (1 if behavior.version else 0)  # asked once per labeler
    constrained = {r["stage2_text"] for r in records.values()} <= {"0", "1", "-1"}
    assert constrained == (mode != "none")
    assert result.stats["failed"] == 0


def test_structured_output_mode_for_version():
    assert structured_output_mode_for_version("0.32.0") == "structured_outputs"
    assert structured_output_mode_for_version("0.10.2") == "structured_outputs"
    assert structured_output_mode_for_version("0.10.1.dev3+g1234") == "guided_choice"
    assert structured_output_mode_for_version("0.6.6.post1") == "guided_choice"
    assert structured_output_mode_for_version(None) == "structured_outputs"


# ---- prompt fidelity


def test_stage1_prompt_interleaves_images_and_says_the_frame_count():
    template = load_prompts("v2")[0]
    parts = stage1_content(template, task="open the drawer", num_frames=5, images=(b"A", b"B"))
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"].endswith("Video 1:") and parts[2]["text"] == "Video 2:"
    assert "5 frames" in parts[0]["text"] and "Timestep 4" in parts[0]["text"] and "three" not in parts[0]["text"]
    assert "open the drawer" in parts[4]["text"]
    assert parts[1]["image_url"]["url"].endswith("QQ==") and parts[3]["image_url"]["url"].endswith("Qg==")  # A then B
    one = stage1_content(template, task="x", num_frames=1, images=(b"A", b"B"))
    assert "1 frame placed" in one[0]["text"]
    # a template without image markers (v1) gets both images after its text
    legacy = stage1_content(load_prompts("v1")[0], task="x", num_frames=3, images=(b"A", b"B"))
    assert [p["type"] for p in legacy] == ["text", "image_url", "image_url"]


def test_server_sees_each_image_after_its_video_line():
    images, _ = make_pairs(1)
    with LoopbackVLMServer() as server:
        VLMLabeler(config(server, num_keyframes=4)).label(PairBatch(TASK, images=images), progress=False)
        parts = server.last_stage1_parts
    assert [kind for kind, _ in parts] == ["text", "image", "text", "image", "text"]
    assert parts[0][1].endswith("Video 1:") and "4 frames" in parts[0][1] and parts[2][1] == "Video 2:"


def test_fault_kinds_are_validated():
    with pytest.raises(ValueError, match="unknown fault kinds"):
        LoopbackBehavior(fault_rate=0.1, fault_kinds=("gremlins",))
    assert LoopbackBehavior(fault_rate=0.1).fault_kinds == FAULT_KINDS


def test_preflight_with_another_image_count_sees_the_servers_limit():
    with LoopbackVLMServer() as server:  # allows 2 images per prompt
        with pytest.raises(VLMConfigError, match="At most 2 image"):
            preflight(config(server), num_images=3)
        assert server.counts["requests"] == 1
