"""Reasoning models: the answer after the thinking is the label, never anything the model thought.

Every end-to-end test drives the real `VLMLabeler` against the loopback server (a real HTTP
server speaking the chat-completions protocol) made to think aloud: in a `<think>` block, or in
the message's `reasoning_content` / `reasoning` field as vLLM's reasoning parser returns it.
The fake model's thinking names a wrong answer and wrong brightness numbers, so a client that
read or pasted the thinking would get wrong labels, not merely noisy ones.
"""

import numpy as np
import pytest

from plare_jax.labeling import PAIR_MALFORMED, PAIR_OK, PAIR_UNSURE, PairBatch, VLMConfig, VLMLabeler
from plare_jax.labeling.answers import CHOICES, parse_choice
from plare_jax.testing.loopback_server import (
    REASONING_MARKER,
    REASONING_MODES,
    LoopbackBehavior,
    LoopbackVLMServer,
    _thinking,
    brightness_png,
)
from plare_jax.labeling.report import format_report, labeling_report
from plare_jax.labeling.store import LabelStore
from plare_jax.labeling.vlm import _InvalidAnswer, _read_completion

TASK = "open the drawer"
MARGIN = LoopbackBehavior().tie_margin
ANSWERING_MODES = ("think", "reasoning_content", "reasoning", "odd_reasoning")
NO_ANSWER_MODES = ("unterminated_think", "reasoning_only")
assert set(ANSWERING_MODES + NO_ANSWER_MODES) == set(REASONING_MODES)


def make_pairs(n: int, ties: int = 0):
    """n distinct image pairs of known brightness (the first `ties` near-equal), and the intended labels."""
    levels = [(10 * i + 5, 10 * i + 7) for i in range(ties)] + [((i * 37) % 256, (i * 101 + 50) % 256) for i in range(n - ties)]
    images = [(brightness_png(a / 255), brightness_png(b / 255)) for a, b in levels]
    gaps = np.array([(b - a) / 255 for a, b in levels])
    return images, np.where(gaps > MARGIN, 1, np.where(gaps < -MARGIN, 0, -1))


def config(server, **kw):
    return VLMConfig(base_url=server.base_url, model=server.model, retry_backoff_s=0.01, **kw)


@pytest.mark.parametrize("intended", CHOICES)
def test_the_fake_models_thinking_would_mislead_a_client_that_read_it(intended):
    # The premise of the end-to-end tests: parsed on its own, the thinking names a wrong answer.
    thought = _thinking(2, intended, 400)
    assert parse_choice(thought) not in (None, int(intended))
    assert parse_choice(f"<think>{thought}</think>{intended}") == int(intended)


@pytest.mark.parametrize(
    "mode, unstructured",
    [("think", False), ("think", True), ("reasoning_content", False), ("reasoning", False),
     ("reasoning", True), ("odd_reasoning", False)],
)  # fmt: skip
def test_answer_after_the_reasoning_is_the_label(tmp_path, mode, unstructured):
    images, intent = make_pairs(12, ties=3)
    behavior = LoopbackBehavior(reasoning=mode, ignore_structured_output=unstructured)
    with LoopbackVLMServer(behavior=behavior) as server, LabelStore(tmp_path / "l.sqlite") as store:
        labeler = VLMLabeler(config(server), store=store)
        result = labeler.label(PairBatch(TASK, images=images), progress=False)
        counts = server.counts
        records = store.get_many(labeler.keys(PairBatch(TASK, images=images)))
    np.testing.assert_array_equal(result.preferences, intent)
    np.testing.assert_array_equal(result.status, np.where(intent == -1, PAIR_UNSURE, PAIR_OK))
    s = result.stats
    assert (s["malformed"], s["failed"], s["retries"], s["reasoning_without_answer"]) == (0, 0, 0, 0)
    assert s["requests"] == 24 and counts["reasoning_replies"] == 24
    assert counts.get("reasoning_echoed", 0) == 0  # stage 2 got the description, not the thinking
    assert len(records) == 12
    for record in records.values():  # stored: the answers, without the thinking
        assert REASONING_MARKER not in record["stage1_text"] + record["stage2_text"]
        assert "<think>" not in record["stage1_text"] and "brightness" in record["stage1_text"]
        assert parse_choice(record["stage2_text"]) == record["preference"]
        if not unstructured:
            assert record["stage2_text"] in CHOICES


@pytest.mark.parametrize("mode", NO_ANSWER_MODES)
def test_stage2_reply_that_is_all_reasoning_is_malformed_and_asked_again(tmp_path, mode):
    images, intent = make_pairs(6, ties=2)
    batch = PairBatch(TASK, images=images)
    with LabelStore(tmp_path / "l.sqlite") as store:
        behavior = LoopbackBehavior(reasoning=mode, reasoning_stages=(2,))
        with LoopbackVLMServer(behavior=behavior) as server:
            result = VLMLabeler(config(server, max_retries=2), store=store).label(batch, progress=False)
            counts = server.counts
        # never a choice guessed from the thinking (which names a wrong one)
        assert list(result.status) == [PAIR_MALFORMED] * 6 and np.all(result.preferences == -1)
        s = result.stats
        assert s["malformed"] == 6 and s["failed"] == 0 and s["unsure_answers"] == 0
        assert s["requests"] == 6 * (1 + 3) and counts["stage2"] == 6 * 3  # each re-asked twice
        assert s["reasoning_without_answer"] == 6 * 3 and s["sure_answers"] == 0
        assert s["first_answer_share"] is None
        assert len(store) == 0  # not stored: a re-run asks again
        report = format_report(labeling_report(result.preferences, intent, s))
        assert "18 replies were all reasoning" in report and "--vlm.max-tokens" in report
        with LoopbackVLMServer() as server:
            again = VLMLabeler(config(server), store=store).label(batch, progress=False)
            assert server.counts["requests"] == 12
        np.testing.assert_array_equal(again.preferences, intent)


@pytest.mark.parametrize("mode", NO_ANSWER_MODES)
def test_stage1_reply_that_is_all_reasoning_is_never_pasted_into_stage2(mode):
    images, _ = make_pairs(4)
    with LoopbackVLMServer(behavior=LoopbackBehavior(reasoning=mode)) as server:
        result = VLMLabeler(config(server, max_retries=1)).label(PairBatch(TASK, images=images), progress=False)
        counts = server.counts
    assert list(result.status) == [PAIR_MALFORMED] * 4
    # stage 1 asked twice per pair, stage 2 never: there was no description to paste
    assert counts["stage1"] == 8 and counts["stage2"] == 0 and counts.get("reasoning_echoed", 0) == 0
    assert result.stats["requests"] == 8 and result.stats["reasoning_without_answer"] == 8


@pytest.mark.parametrize("mode", ["think", "reasoning_content"])
def test_huge_reasoning_is_dropped_and_the_answer_read(mode):
    # 1.2 M characters of thinking, far past the answer limit (64 x max_tokens): the limit bounds
    # the answer, and the thinking is dropped whatever its length.
    images, intent = make_pairs(3)
    behavior = LoopbackBehavior(reasoning=mode, reasoning_chars=1_200_000)
    with LoopbackVLMServer(behavior=behavior) as server:
        cfg = config(server, timeout_s=60.0)
        assert cfg.max_answer_chars() < 1_200_000
        result = VLMLabeler(cfg).label(PairBatch(TASK, images=images), progress=False)
        assert server.counts.get("reasoning_echoed", 0) == 0
    np.testing.assert_array_equal(result.preferences, intent)
    assert result.stats["failed"] == 0 and result.stats["malformed"] == 0


def _response(message, finish_reason="stop"):
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}}  # fmt: skip


@pytest.mark.parametrize(
    "message, answer, reasoning",
    [
        ({"content": "1"}, "1", False),
        ({"content": "<think>The answer is 0.</think>\n\n1"}, "1", True),
        ({"content": "The answer is 0.</think>1"}, "1", True),  # the template opened the block
        ({"content": "<think>The answer is 0. Still thinking"}, "", True),
        ({"content": "<think>The answer is 0.</think>   "}, "", True),
        ({"content": None, "reasoning_content": "The answer is 0."}, "", True),
        ({"content": "", "reasoning": "The answer is 0."}, "", True),
        ({"content": "1", "reasoning_content": "The answer is 0."}, "1", True),
        ({"content": "1", "reasoning_content": 7, "reasoning": ["x"]}, "1", False),
        ({"content": "1", "reasoning_content": None}, "1", False),
        ({"content": "<think>" + "0 " * 500_000 + "</think>1"}, "1", True),
        ({"content": "1\udc80"}, "1\\udc80", False),
    ],
)  # fmt: skip
def test_read_completion_keeps_only_the_answer(message, answer, reasoning):
    reply = _read_completion(_response({"role": "assistant", **message}), max_chars=16_384)
    assert (reply.answer, reply.reasoning) == (answer, reasoning)
    assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (10, 5, "stop")


@pytest.mark.parametrize(
    "response",
    [
        _response({"content": None}),
        _response({"content": "   "}),
        _response({"content": None, "reasoning_content": 5, "reasoning": {"text": "0"}}),
        _response({"content": None, "reasoning_content": "   "}),
        _response({"content": 1, "reasoning_content": "The answer is 0."}),
        _response({"content": ["1"]}),
        _response({"content": "<think>x</think>" + "1 " * 20_000}),  # the answer itself is too long
        _response(None),
        _response("1"),
        {"choices": [None]},
        {"choices": []},
        {"choices": "1"},
        None,
    ],
)
def test_read_completion_rejects_replies_without_any_text(response):
    with pytest.raises(_InvalidAnswer):
        _read_completion(response, max_chars=16_384)


def test_read_completion_survives_odd_finish_reasons_and_usage():
    reply = _read_completion({"choices": [{"message": {"content": "<think>a"}, "finish_reason": 3}], "usage": "x"}, 100)
    assert (reply.answer, reply.reasoning, reply.finish_reason, reply.prompt_tokens) == ("", True, None, 0)
    reply = _read_completion(_response({"content": None, "reasoning": "a"}, finish_reason="length"), 100)
    assert (reply.answer, reply.finish_reason) == ("", "length")


def test_reasoning_modes_are_validated():
    with pytest.raises(ValueError, match="unknown reasoning mode"):
        LoopbackBehavior(reasoning="daydream")
    with pytest.raises(ValueError, match="position_bias"):
        LoopbackBehavior(position_bias=1.5)
