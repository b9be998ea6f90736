"""A loopback OpenAI-compatible server: a deterministic test double of the VLM.

It is a real HTTP server on 127.0.0.1 (one thread per connection, so it sustains
hundreds of concurrent slow requests) that speaks `/v1/chat/completions`,
`/v1/models` and `/health` like `vllm serve`. Only the model is faked:

- stage 1 (a request with images) answers with the mean brightness of each image
  and a pair id, so answers correlate with the images' content;
- stage 2 (text only) reads those numbers back from the pasted stage-1 answer and
  prefers the brighter clip (`-1` when they are within `tie_margin`);
- a position-biased model (`position_bias`) answers "0" (the clip shown first) for a share of
  pairs, chosen by a hash of the images in the order shown, whatever they show;
- a reasoning model (`reasoning`, `REASONING_MODES`) thinks aloud before answering, in a
  `<think>` block or in the message's `reasoning_content` / `reasoning` field as vLLM's
  reasoning parser returns it; its thinking names a wrong answer ("The answer is 0." where
  the intended one is 1) and carries `REASONING_MARKER`, so a client that reads or pastes
  the thinking gets caught.

Every answer and every injected failure depends only on the request's content
(and how often that content was asked), never on arrival order or timing, so tests
are deterministic. Failure modes: HTTP errors (500/429) on the first k tries of each
request, hung requests, a fraction of pairs that always hang or always answer
malformed, a fixed latency, a server that takes no images or too few per prompt,
and a fuzz mode (`fault_rate`, `FAULT_KINDS`) that answers a share of requests with
broken bodies (random bytes, invalid UTF-8, truncated JSON, huge, trickling, stalled,
dropped), odd but readable answers (Unicode digits and minus signs, lone surrogates,
the same answer twice) or ambiguous ones (two different answers).

Structured output behaves like a chosen vLLM version (`/version`): by default 0.32,
which honours `structured_outputs` and ignores `guided_choice` (counted as a warning).

Run standalone: `python -m plare_jax.testing.loopback_server --port 8000`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import io
import json
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
_BRIGHTNESS_RE = re.compile(r"Video ([12]) brightness ([0-9]+\.[0-9]+)")
_PAIR_RE = re.compile(r"pair id ([0-9a-f]{16})")


@dataclasses.dataclass
class LoopbackBehavior:
    """How the fake model answers.

    Attributes:
        latency_s: Fixed delay of every chat request.
        fail_first_k: The first k tries of each distinct request get HTTP `fail_status`.
        fail_status: 500 (server error) or 429 (rate limited), for instance.
        hang_first_k: The first k tries of each distinct request hang for `hang_s`.
        hang_s: How long a hung request waits before answering (longer than the client timeout).
        hang_fraction: Fraction of pairs (by content hash) whose requests always hang.
        malformed_fraction: Fraction of pairs (by content hash) whose stage-2 answer is
            ambiguous text, even when structured output was requested.
        ignore_structured_output: Answer stage 2 in a sentence ("The answer is 1.")
            instead of honouring the requested choice constraint.
        tie_margin: Brightness gap at or below which stage 2 answers -1.
        retry_after_s: Retry-After header value sent with injected errors (None: no header).
        version: What GET /version reports (vLLM's {"version": ...}); None: no such route (404).
        honoured_keys: Request keys whose choice constraint is honoured ("structured_outputs"
            as vLLM >= 0.10.2, "guided_choice" as older vLLM).
        reject_unknown_keys: A request with a constraint key not honoured gets HTTP 400 naming it
            (like a strict OpenAI-style server); False: it is ignored and counted as a warning (like vLLM).
        reject_images_message: Answer every request with images with HTTP 400 and this message
            (e.g. a text-only model: "Qwen2ForCausalLM is not a multimodal model").
        max_images: Images allowed per prompt (vLLM's --limit-mm-per-prompt); more -> HTTP 400.
        fault_rate: Fuzz mode: share of requests (by content and try number) answered with a fault.
        fault_kinds: Which faults the fuzz mode draws from (uniformly); see `FAULT_KINDS`.
        fault_seed: Changes which requests get which fault.
        trickle_s: A "trickle" fault sends its body in small pieces over this long.
        huge_body_chars: Length of the answer text of a "huge_body" fault.
        hold_until_in_flight: Hold every request until this many are in flight at once (then
            answer all, and never hold again); 0: no gate. Proves a client's concurrency without
            a clock: a client with fewer requests in flight waits `hold_timeout_s` and the
            server counts a "gate_timeouts".
        hold_timeout_s: How long the gate waits before answering anyway.
        position_bias: Share of stage-2 answers that are "0" (Video 1) whatever the images: a
            model that prefers the position shown first. Chosen per pair and image order by a
            hash (so (A, B) and (B, A) are drawn apart, and retries answer the same); the
            other answers are the intended ones.
        reasoning: How the fake model thinks before answering (None: it does not); one of
            `REASONING_MODES`.
        reasoning_stages: Which stages (1: description, 2: choice) think.
        reasoning_chars: Length of the thinking text (huge, to test a client's limits).
    """

    latency_s: float = 0.0
    fail_first_k: int = 0
    fail_status: int = 500
    hang_first_k: int = 0
    hang_s: float = 30.0
    hang_fraction: float = 0.0
    malformed_fraction: float = 0.0
    ignore_structured_output: bool = False
    tie_margin: float = 0.02
    retry_after_s: float | None = None
    version: str | None = "0.32.0"
    honoured_keys: tuple[str, ...] = ("structured_outputs",)
    reject_unknown_keys: bool = False
    reject_images_message: str | None = None
    max_images: int = 2
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = ()
    fault_seed: int = 0
    trickle_s: float = 3.0
    huge_body_chars: int = 1_500_000
    hold_until_in_flight: int = 0
    hold_timeout_s: float = 60.0
    position_bias: float = 0.0
    reasoning: str | None = None
    reasoning_stages: tuple[int, ...] = (1, 2)
    reasoning_chars: int = 400

    def __post_init__(self):
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if self.reasoning is not None and self.reasoning not in REASONING_MODES:
            raise ValueError(f"unknown reasoning mode {self.reasoning!r}; known: {REASONING_MODES}")
        if not 0.0 <= self.position_bias <= 1.0:
            raise ValueError(f"position_bias must be in [0, 1], got {self.position_bias}.")
        if self.fault_rate > 0 and not self.fault_kinds:
            self.fault_kinds = FAULT_KINDS


# Fuzz faults. Body and transport faults make a request fail (the client must retry);
# "unicode_answer", "lone_surrogate", "same_answer_twice" and "trickle" (when shorter than
# the client's deadline) still carry the intended answer; "two_answers" names two different
# choices and must read as malformed, never as either of them.
FAULT_KINDS = (
    "http_error", "drop_connection", "random_bytes", "invalid_utf8", "truncated_json", "huge_body",
    "empty_choices", "null_content", "wrong_types", "trickle", "stall",
    "unicode_answer", "lone_surrogate", "two_answers", "same_answer_twice",
)  # fmt: skip
STRUCTURED_KEYS = ("structured_outputs", "guided_choice")
# How a reasoning model's reply looks:
# - "think": content "<think>THINKING</think>ANSWER" (no reasoning parser on the server);
# - "reasoning_content" / "reasoning": the thinking in that message field, content the answer
#   (vLLM's reasoning parser; older versions name the field reasoning_content);
# - "unterminated_think": content "<think>THINKING" and finish_reason "length" (the tokens ran
#   out while thinking: no answer);
# - "reasoning_only": the thinking in reasoning_content, content None, finish_reason "length"
#   (the same, behind a reasoning parser);
# - "odd_reasoning": reasoning fields of the wrong types (a number, a list) beside the answer.
REASONING_MODES = ("think", "reasoning_content", "reasoning", "unterminated_think", "reasoning_only", "odd_reasoning")
# Written in every thinking text: a stage-2 request that contains it got the thinking pasted in.
REASONING_MARKER = "(thinking aloud)"
# Ways to write each answer with non-ASCII digits or minus signs (each must still read as that answer).
UNICODE_SPELLINGS = {
    "0": ("\u0660", "\uff10", "\U0001d7ce", "\u06f0", "\u0966", "Answer: \uff10", "**\u0660**"),
    "1": ("\u0661", "\uff11", "\U0001d7cf", "\u0967", "\u00b9", "Answer: \u0661", "'\uff11'"),
    "-1": ("\u22121", "- 1", "\u20131", "\u2014 1", "\u20121", "\u20151", "\ufe631", "\uff0d\uff11",
           "\u2212\u0661", "\u20101", "\u207b\u00b9", "Answer: \u2212 1", "\u27961"),
}  # fmt: skip


def brightness_png(level: float, size: int = 8) -> bytes:
    """A uniform grey PNG of brightness `level` in [0, 1] (test images with known content)."""
    value = int(round(np.clip(level, 0.0, 1.0) * 255))
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _image_brightness(data_url: str) -> float:
    _, _, payload = data_url.partition("base64,")
    with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).mean() / 255.0)


def _unit_hash(text: str) -> float:
    """A number in [0, 1) fixed by `text`."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


@dataclasses.dataclass
class _Reply:
    """What the handler writes: a JSON body, or raw bytes, possibly trickled, stalled or dropped."""

    status: int
    body: dict | list | str | None = None
    raw: bytes | None = None
    headers: dict = dataclasses.field(default_factory=dict)
    trickle_s: float = 0.0  # send the body in pieces over this long
    stall_s: float = 0.0  # send half the body, then wait this long
    drop: bool = False  # close the connection without an answer
    fault: str | None = None

    def payload(self) -> bytes:
        if self.raw is not None:
            return self.raw
        # ensure_ascii: lone surrogates go out as \\udcXX escapes (valid JSON, as a real server may send).
        return json.dumps(self.body).encode()


def _error(status: int, message: str, **headers) -> _Reply:
    return _Reply(status, {"error": {"message": message, "type": "BadRequestError", "code": status}}, headers=headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real server
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format, *args):  # silence per-request logging
        pass

    def _send(self, reply: _Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        data = reply.payload()
        stop = self.server.stop_event
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if reply.stall_s > 0:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                if stop.wait(reply.stall_s):
                    return
                self.wfile.write(data[len(data) // 2 :])
            elif reply.trickle_s > 0:
                pieces = 30
                step = max(1, -(-len(data) // pieces))
                for i in range(0, len(data), step):
                    self.wfile.write(data[i : i + step])
                    self.wfile.flush()
                    if stop.wait(reply.trickle_s / pieces):
                        return
                self.server.count("trickle_completed")
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            if reply.trickle_s > 0:
                self.server.count("trickle_abandoned")  # the client gave up on the slow body
            self.close_connection = True

    def do_GET(self):
        if self.path == "/health":
            self._send(_Reply(200, {}))
        elif self.path == "/v1/models":
            self._send(_Reply(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]}))
        elif self.path == "/version" and self.server.behavior.version is not None:
            self.server.count("version_requests")
            self._send(_Reply(200, {"version": self.server.behavior.version}))
        else:
            self._send(_error(404, f"no route {self.path}"))

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if self.path != "/v1/chat/completions":
            self._send(_error(404, f"no route {self.path}"))
            return
        try:
            request = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._send(_error(400, "body is not JSON"))
            return
        try:
            reply = self.server.answer(request)
        except Exception as err:  # a bug in the fake must surface as an HTTP error, not a dropped connection
            reply = _error(500, f"loopback server error: {err!r}")
        self._send(reply)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # listen backlog: many clients connect at once

    def __init__(self, address, model: str, behavior: LoopbackBehavior):
        super().__init__(address, _Handler)
        self.model = model
        self.behavior = behavior
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.counts = {"requests": 0, "stage1": 0, "stage2": 0, "errors": 0, "hung": 0, "max_in_flight": 0,
                       "gate_timeouts": 0}  # fmt: skip
        self.in_flight = 0
        self.gate_open = threading.Event()
        self.faults: dict[str, int] = {}
        self.last_stage1_parts: list[tuple[str, str]] = []

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is no error of the fake
            super().handle_error(request, client_address)

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def answer(self, request: dict) -> _Reply:
        with self.lock:
            self.in_flight += 1
            self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self.in_flight)
            if self.in_flight >= self.behavior.hold_until_in_flight:
                self.gate_open.set()
        try:
            if self.behavior.hold_until_in_flight and not self.gate_open.wait(self.behavior.hold_timeout_s):
                self.count("gate_timeouts")
                self.gate_open.set()
            return self._answer(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, request: dict) -> _Reply:
        b = self.behavior
        self.count("requests")
        if request.get("model") != self.model:
            return _error(404, f"The model `{request.get('model')}` does not exist.")
        messages = request.get("messages") or []
        content_key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        with self.lock:
            attempt = self.attempts.get(content_key, 0)
            self.attempts[content_key] = attempt + 1

        texts, images, parts = [], [], []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
                continue
            for part in content or []:
                if part.get("type") == "text":
                    texts.append(part["text"])
                    parts.append(("text", part["text"]))
                elif part.get("type") == "image_url":
                    images.append(part["image_url"]["url"])
                    parts.append(("image", part["image_url"]["url"][-16:]))
        text = "\n".join(texts)
        if images and b.reject_images_message:
            return _error(400, b.reject_images_message)
        if len(images) > b.max_images:
            return _error(400, f"At most {b.max_images} image(s) may be provided in one prompt. (parameter=image)")
        sent_keys = [k for k in STRUCTURED_KEYS if k in request]
        unknown_keys = [k for k in sent_keys if k not in b.honoured_keys]
        if unknown_keys and b.reject_unknown_keys:
            return _error(400, f"Unrecognized request argument supplied: {unknown_keys[0]}")
        if unknown_keys:
            self.count("ignored_structured_keys")  # vLLM logs a warning per such request
        constrained = any(k in b.honoured_keys for k in sent_keys)

        if images:
            if len(images) != 2:
                return _error(400, f"expected 2 images, got {len(images)}")
            with self.lock:
                self.last_stage1_parts = parts
            levels = [_image_brightness(url) for url in images]
            pair_id = hashlib.sha256("".join(images).encode()).hexdigest()[:16]
        else:
            if REASONING_MARKER in text:
                self.count("reasoning_echoed")  # the client pasted stage-1 thinking into stage 2
            found = dict(_BRIGHTNESS_RE.findall(text))
            levels = [float(found["1"]), float(found["2"])] if len(found) == 2 else None
            match = _PAIR_RE.search(text)
            pair_id = match.group(1) if match else content_key[:16]

        hang = attempt < b.hang_first_k or (b.hang_fraction > 0 and _unit_hash(pair_id + "hang") < b.hang_fraction)
        if hang:
            self.count("hung")
            self.stop_event.wait(b.hang_s)
        elif b.latency_s > 0:
            self.stop_event.wait(b.latency_s)
        if attempt < b.fail_first_k:
            self.count("errors")
            headers = {"Retry-After": str(b.retry_after_s)} if b.retry_after_s is not None else {}
            return _error(b.fail_status, f"injected HTTP {b.fail_status}", **headers)

        fault = None
        if b.fault_rate > 0 and _unit_hash(f"{b.fault_seed}:{content_key}:{attempt}:fault") < b.fault_rate:
            fault = b.fault_kinds[int(_unit_hash(f"{b.fault_seed}:{content_key}:{attempt}:kind") * len(b.fault_kinds))]
            with self.lock:
                self.faults[fault] = self.faults.get(fault, 0) + 1
        variant = _unit_hash(f"{b.fault_seed}:{content_key}:{attempt}:variant")

        if images:
            self.count("stage1")
            answer = (
                f"Video 1 brightness {levels[0]:.4f}. Video 2 brightness {levels[1]:.4f}. "
                f"The videos differ in brightness. (pair id {pair_id})"
            )
            if fault in ("unicode_answer", "two_answers", "same_answer_twice", "lone_surrogate"):
                answer += " \udc80\ud800"  # stage 1 has no choice to garble: a surrogate-laden description
        else:
            self.count("stage2")
            answer = self._stage2_answer(levels, pair_id, constrained, fault, variant)
        stage = 1 if images else 2
        mode = b.reasoning if stage in b.reasoning_stages else None
        thinking = ""
        if mode is not None:
            self.count("reasoning_replies")
            thinking = _thinking(stage, intended_choice(levels, b.tie_margin), b.reasoning_chars)
        prompt_tokens = len(text) // 4 + 256 * len(images)
        completion_tokens = max(1, len(answer) // 4) + len(thinking) // 4
        return self._completion(content_key, answer, prompt_tokens, completion_tokens, fault, variant,
                                reasoning=mode, thinking=thinking)  # fmt: skip

    def _completion(self, content_key: str, answer: str, prompt_tokens: int, completion_tokens: int,
                    fault: str | None, variant: float, *, reasoning: str | None = None,
                    thinking: str = "") -> _Reply:  # fmt: skip
        b = self.behavior
        message, finish = _reasoning_message(answer, reasoning, thinking)
        body = {
            "id": f"chatcmpl-{content_key[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        rng = np.random.default_rng(int(variant * 2**32))
        if fault == "http_error":
            status = (500, 502, 503, 429)[int(variant * 4)]
            return _error(status, f"injected HTTP {status}", **{"Retry-After": "0"})
        if fault == "drop_connection":
            return _Reply(200, drop=True, fault=fault)
        if fault == "random_bytes":
            return _Reply(200, raw=rng.bytes(int(1 + variant * 4000)), fault=fault)
        if fault == "invalid_utf8":
            raw = json.dumps(body).encode().replace(b'"content": "', b'"content": "\xff\xfe\xc3(', 1)
            return _Reply(200, raw=raw, fault=fault)
        if fault == "truncated_json":
            raw = json.dumps(body).encode()
            return _Reply(200, raw=raw[: int(len(raw) * (0.1 + 0.8 * variant))], fault=fault)
        if fault == "huge_body":
            body["choices"][0]["message"]["content"] = (message["content"] or "") + " " + "blah " * (b.huge_body_chars // 5)
            return _Reply(200, body, fault=fault)
        if fault == "empty_choices":
            body["choices"] = []
            return _Reply(200, body, fault=fault)
        if fault == "null_content":
            body["choices"][0]["message"]["content"] = None
            return _Reply(200, body, fault=fault)
        if fault == "wrong_types":
            shapes = (
                {**body, "choices": "not a list"},
                {**body, "choices": [{"index": 0, "message": {"role": "assistant", "content": 1}}]},
                {**body, "choices": [{"index": 0, "message": "0"}]},
                ["choices", answer],
                answer,
                {**body, "choices": [None]},
            )
            return _Reply(200, shapes[int(variant * len(shapes))], fault=fault)
        if fault == "trickle":
            return _Reply(200, body, trickle_s=b.trickle_s, fault=fault)
        if fault == "stall":
            return _Reply(200, body, stall_s=b.hang_s, fault=fault)
        return _Reply(200, body, fault=fault)

    def _stage2_answer(self, levels: list[float] | None, pair_id: str, constrained: bool, fault: str | None,
                       variant: float) -> str:  # fmt: skip
        b = self.behavior
        if b.malformed_fraction > 0 and _unit_hash(pair_id + "malformed") < b.malformed_fraction:
            return "It is hard to say; either Video 0 or Video 1 might be better."
        choice = intended_choice(levels, b.tie_margin)
        if b.position_bias > 0 and _unit_hash(pair_id + "position") < b.position_bias:
            self.count("position_biased")
            choice = "0"  # Video 1, whatever the images show
        if fault == "unicode_answer":
            spellings = UNICODE_SPELLINGS[choice]
            return spellings[int(variant * len(spellings))]
        if fault == "lone_surrogate":
            return choice + "\udc80"
        if fault == "same_answer_twice":
            return f"{choice}\n\nAnswer: {choice}"
        if fault == "two_answers":
            other = [c for c in ("0", "1", "-1") if c != choice][int(variant * 2)]
            first, second = (choice, other) if variant < 0.5 else (other, choice)
            return (f"{first} or {second}", f"The answer is {first}. No, the answer is {second}.")[int(variant * 4) % 2]
        if constrained and not b.ignore_structured_output:
            return choice
        return f"Comparing the two descriptions, the answer is {choice}."


def _thinking(stage: int, intended: str, length: int) -> str:
    """The fake model's thinking: `length` characters that name a wrong answer (and, in stage 1,
    wrong brightness numbers), so that a client reading or pasting them gets a wrong label."""
    wrong = {"0": "1", "1": "0", "-1": "0"}[intended]
    if stage == 1:
        base = (f"{REASONING_MARKER} Let me look at both videos. Perhaps Video 1 brightness 0.9999 and "
                f"Video 2 brightness 0.0001? The answer is {wrong}. ")  # fmt: skip
    else:
        base = f"{REASONING_MARKER} Comparing the descriptions: 0, 1 or -1? The answer is {wrong}. "
    return (base * (length // len(base) + 1))[:max(length, 1)]


def _reasoning_message(answer: str, mode: str | None, thinking: str) -> tuple[dict, str]:
    """(message, finish_reason) of a reply that thinks as `mode` says (see `REASONING_MODES`)."""
    if mode is None:
        return {"role": "assistant", "content": answer}, "stop"
    if mode == "think":
        return {"role": "assistant", "content": f"<think>\n{thinking}\n</think>\n\n{answer}"}, "stop"
    if mode in ("reasoning_content", "reasoning"):
        return {"role": "assistant", "content": answer, mode: thinking}, "stop"
    if mode == "unterminated_think":
        return {"role": "assistant", "content": f"<think>\n{thinking}"}, "length"
    if mode == "reasoning_only":
        return {"role": "assistant", "content": None, "reasoning_content": thinking}, "length"
    return {"role": "assistant", "content": answer, "reasoning_content": 7, "reasoning": [thinking]}, "stop"


def intended_choice(levels: list[float] | None, tie_margin: float) -> str:
    """The stage-2 answer the fake model means: the brighter clip, "-1" within `tie_margin` or unknown."""
    if levels is None:
        return "-1"
    if levels[1] - levels[0] > tie_margin:
        return "1"
    if levels[0] - levels[1] > tie_margin:
        return "0"
    return "-1"


class LoopbackVLMServer:
    """Starts the fake VLM server in a background thread; a context manager.

    Args:
        model: Model name it serves (requests for other models get 404, like vLLM).
        behavior: Latency and failure modes; defaults to instant valid answers.
        port: Port on 127.0.0.1; 0 picks a free one.

    Example:
        >>> with LoopbackVLMServer(behavior=LoopbackBehavior(latency_s=0.1)) as server:
        ...     url = server.base_url  # "http://127.0.0.1:PORT/v1"
    """

    def __init__(self, model: str = DEFAULT_MODEL, behavior: LoopbackBehavior | None = None, *, port: int = 0):
        self.model = model
        self.behavior = behavior or LoopbackBehavior()
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LoopbackVLMServer:
        """Binds the port and starts serving."""
        self._server = _Server(("127.0.0.1", self._port), self.model, self.behavior)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wakes hung requests, stops serving and frees the port."""
        if self._server is None:
            return
        self._server.stop_event.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LoopbackVLMServer is not running; call start() or use it as a context manager.")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def counts(self) -> dict:
        """Requests received: total, answered stage 1 / stage 2, injected errors, hung, ignored
        constraint keys (vLLM's per-request warning), trickles completed or abandoned by the client,
        the peak number in flight at once and now, gate timeouts (`hold_until_in_flight` not reached),
        position-biased answers, replies with reasoning, and stage-2 requests with stage-1 thinking
        pasted in ("reasoning_echoed")."""
        with self._server.lock:
            return {**self._server.counts, "in_flight": self._server.in_flight}

    @property
    def faults(self) -> dict:
        """Fuzz faults sent, by kind."""
        with self._server.lock:
            return dict(self._server.faults)

    @property
    def last_stage1_parts(self) -> list[tuple[str, str]]:
        """Content parts of the last stage-1 request, in order: ("text", text) or ("image", url tail)."""
        with self._server.lock:
            return list(self._server.last_stage1_parts)

    def __enter__(self) -> LoopbackVLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serves until SIGTERM / Ctrl-C (also the body of the fake `vllm` used in tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--fail-first-k", type=int, default=0)
    parser.add_argument("--malformed-fraction", type=float, default=0.0)
    parser.add_argument("--position-bias", type=float, default=0.0, help="share of answers that are 0 whatever the images")
    parser.add_argument("--reasoning", choices=REASONING_MODES, default=None, help="think before answering, this way")
    args = parser.parse_args(argv)
    behavior = LoopbackBehavior(
        latency_s=args.latency_s, fail_first_k=args.fail_first_k, malformed_fraction=args.malformed_fraction,
        position_bias=args.position_bias, reasoning=args.reasoning,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with LoopbackVLMServer(args.model, behavior, port=args.port) as server:
        print(f"loopback VLM server for {args.model} at {server.base_url}", flush=True)
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
