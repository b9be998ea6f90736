"""A loopback OpenAI-compatible server: a deterministic test double of the VLM.

It is a real HTTP server on 127.0.0.1 (one thread per connection, so it sustains
hundreds of concurrent slow requests) that speaks `/v1/chat/completions`,
`/v1/models` and `/health` like `vllm serve`. Only the model is faked:

- stage 1 (a request with images) answers with the mean brightness of each image
  and a pair id, so answers correlate with the images' content;
- stage 2 (text only) reads those numbers back from the pasted stage-1 answer and
  prefers the brighter clip (`-1` when they are within `tie_margin`).

Every answer and every injected failure depends only on the request's content,
never on arrival order or timing, so tests are deterministic. Failure modes:
HTTP errors (500/429) on the first k tries of each request, hung requests, a
fraction of pairs that always hang or always answer malformed, and a fixed latency.

Run standalone: `python -m plare_jax.labeling.loopback_server --port 8000`.
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
        hold_until_in_flight: Hold every request until this many are in flight at once (then
            answer all, and never hold again); 0: no gate. Proves a client's concurrency without
            a clock: a client with fewer requests in flight waits `hold_timeout_s` and the
            server counts a "gate_timeouts".
        hold_timeout_s: How long the gate waits before answering anyway.
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
    hold_until_in_flight: int = 0
    hold_timeout_s: float = 60.0


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real server
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format, *args):  # silence per-request logging
        pass

    def _send_json(self, status: int, body: dict) -> None:
        headers = body.pop("_headers", {})
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); nothing to answer

    def do_GET(self):
        if self.path == "/health":
            self._send_json(200, {})
        elif self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if self.path != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            request = json.loads(raw)
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "body is not JSON"}})
            return
        try:
            status, body = self.server.answer(request)
        except Exception as err:  # a bug in the fake must surface as an HTTP error, not a dropped connection
            status, body = 500, {"error": {"message": f"loopback server error: {err!r}"}}
        self._send_json(status, body)


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

    def _count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def answer(self, request: dict) -> tuple[int, dict]:
        with self.lock:
            self.in_flight += 1
            self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self.in_flight)
            if self.in_flight >= self.behavior.hold_until_in_flight:
                self.gate_open.set()
        try:
            if self.behavior.hold_until_in_flight and not self.gate_open.wait(self.behavior.hold_timeout_s):
                self._count("gate_timeouts")
                self.gate_open.set()
            return self._answer(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, request: dict) -> tuple[int, dict]:
        b = self.behavior
        self._count("requests")
        if request.get("model") != self.model:
            return 404, {"error": {"message": f"The model `{request.get('model')}` does not exist.", "code": 404}}
        messages = request.get("messages") or []
        content_key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        with self.lock:
            attempt = self.attempts.get(content_key, 0)
            self.attempts[content_key] = attempt + 1

        texts, images = [], []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
                continue
            for part in content or []:
                if part.get("type") == "text":
                    texts.append(part["text"])
                elif part.get("type") == "image_url":
                    images.append(part["image_url"]["url"])
        text = "\n".join(texts)
        if images:
            if len(images) != 2:
                return 400, {"error": {"message": f"expected 2 images, got {len(images)}"}}
            levels = [_image_brightness(url) for url in images]
            pair_id = hashlib.sha256("".join(images).encode()).hexdigest()[:16]
        else:
            found = dict(_BRIGHTNESS_RE.findall(text))
            levels = [float(found["1"]), float(found["2"])] if len(found) == 2 else None
            match = _PAIR_RE.search(text)
            pair_id = match.group(1) if match else content_key[:16]

        hang = attempt < b.hang_first_k or (b.hang_fraction > 0 and _unit_hash(pair_id + "hang") < b.hang_fraction)
        if hang:
            self._count("hung")
            self.stop_event.wait(b.hang_s)
        elif b.latency_s > 0:
            self.stop_event.wait(b.latency_s)
        if attempt < b.fail_first_k:
            self._count("errors")
            return b.fail_status, {
                "error": {"message": f"injected HTTP {b.fail_status}", "code": b.fail_status},
                "_headers": {"Retry-After": str(b.retry_after_s)} if b.retry_after_s is not None else {},
            }

        if images:
            self._count("stage1")
            answer = (
                f"Video 1 brightness {levels[0]:.4f}. Video 2 brightness {levels[1]:.4f}. "
                f"The videos differ in brightness. (pair id {pair_id})"
            )
        else:
            self._count("stage2")
            answer = self._stage2_answer(request, levels, pair_id)
        prompt_tokens = len(text) // 4 + 256 * len(images)
        completion_tokens = max(1, len(answer) // 4)
        return 200, {
            "id": f"chatcmpl-{content_key[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _stage2_answer(self, request: dict, levels: list[float] | None, pair_id: str) -> str:
        b = self.behavior
        if b.malformed_fraction > 0 and _unit_hash(pair_id + "malformed") < b.malformed_fraction:
            return "It is hard to say; either Video 0 or Video 1 might be better."
        if levels is None:
            choice = "-1"
        elif levels[1] - levels[0] > b.tie_margin:
            choice = "1"
        elif levels[0] - levels[1] > b.tie_margin:
            choice = "0"
        else:
            choice = "-1"
        constrained = "guided_choice" in request or "choice" in (request.get("structured_outputs") or {})
        if constrained and not b.ignore_structured_output:
            return choice
        return f"Comparing the two descriptions, the answer is {choice}."


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
        """Requests received: total, answered stage 1 / stage 2, injected errors, hung, the peak
        number in flight at once and now, and gate timeouts (`hold_until_in_flight` not reached)."""
        with self._server.lock:
            return {**self._server.counts, "in_flight": self._server.in_flight}

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
    args = parser.parse_args(argv)
    behavior = LoopbackBehavior(
        latency_s=args.latency_s, fail_first_k=args.fail_first_k, malformed_fraction=args.malformed_fraction
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
