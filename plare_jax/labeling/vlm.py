"""VLM labeler over the OpenAI-compatible chat-completions API (vLLM or any such server).

Each pair costs two requests, as in PLARE: stage 1 sends both clips' images, each right
after its "Video 1:" / "Video 2:" line, with the task text and asks for a description of
each clip and whether they differ in achieving the goal; stage 2 (text only, stage-1
answer pasted in) asks which clip better achieves the goal, constrained to "0" / "1" /
"-1" by the server's structured output when it has one, and parsed robustly when it does not.

Reasoning models ("thinking" Qwen3-VL and the like) think aloud before they answer: in a
`<think>...</think>` block of the content, or, behind vLLM's reasoning parser, in the message's
`reasoning_content` / `reasoning` field. Only the answer after the reasoning is read, pasted
into stage 2 and stored; a reply that is all reasoning (the model ran out of tokens while
thinking) has no answer: the pair is malformed, never labelled from what the model thought.

With `VLMConfig.both_orders` each pair is asked in both image orders, (A, B) and (B, A): a
label is kept only when both orders name the same clip, so a model that prefers a position
(always "Video 1", say) gives unsure labels instead of wrong ones (`combine_orders`). Each
order is its own query with its own cache key, so a re-run hits the store for both.

Requests run concurrently (bounded by `VLMConfig.concurrency`), are retried with
exponential backoff and jitter on 429 / 5xx / timeouts / connection errors / unreadable
answers, and every label is committed to the `LabelStore` as soon as it arrives, so a
re-run sends no request for a stored pair and a killed run resumes where it stopped.

Whatever a server sends back (a body that is not JSON or not UTF-8, lone surrogates, no
choices, a huge or trickling answer) ends as a counted per-pair failure after the retries,
never as an exception out of the run; failed and malformed pairs are not stored, so a
re-run asks again. Only a configuration error (the model takes no images, too few images
allowed per prompt, wrong model or key) stops the run, at once, with the server's message.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import functools
import hashlib
import importlib.resources
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request

import numpy as np
import openai
from tqdm.auto import tqdm

from plare_jax.labeling.answers import CHOICES, parse_choice, split_reasoning, storable_text
from plare_jax.labeling.base import (
    PAIR_FAILED,
    PAIR_MALFORMED,
    PAIR_OK,
    PAIR_STATUSES,
    PAIR_UNSURE,
    UNSURE,
    LabelResult,
    PairBatch,
)
from plare_jax.labeling.store import LabelStore, label_key
from plare_jax.errors import PlareError

logger = logging.getLogger(__name__)

__all__ = [
    "VLMConfig", "VLMLabeler", "VLMEndpointError", "VLMConfigError", "check_endpoint", "preflight",
    "parse_choice", "stage1_content", "structured_output_mode_for_version", "combine_orders",
    "answer_stats", "REASONING_FIELDS",
]  # fmt: skip

BASE_URL_ENV = "PLARE_VLM_BASE_URL"
# Message fields where a server with a reasoning parser puts the model's thinking (vLLM: older
# versions `reasoning_content`, newer `reasoning`); the answer stays in `content`.
REASONING_FIELDS = ("reasoning_content", "reasoning")
_STATUS_DTYPE = f"<U{max(map(len, PAIR_STATUSES))}"
# How the stage-2 choice constraint is sent. vLLM >= 0.10.2 reads `structured_outputs`
# (and 0.12 dropped `guided_choice`, which 0.32 ignores with a warning per request);
# older vLLM reads `guided_choice`; "none" sends no constraint (answers are parsed).
STRUCTURED_KEYS = ("structured_outputs", "guided_choice")
_STRUCTURED_OUTPUTS_SINCE = (0, 10, 2)
# Server messages that mean "this server cannot take our image requests at all".
_CONFIG_ERROR_RE = re.compile(
    r"not a multi-?modal model|does not support (?:multi-?modal|vision|images?)|images? (?:is|are) not supported"
    r"|at most \d+ images?|limit[-_]mm[-_]per[-_]prompt|\(parameter=image\)|allowed values: \['text'\]",
    re.IGNORECASE,
)


class VLMEndpointError(PlareError, RuntimeError):
    """The VLM server cannot be used: unreachable, wrong model, or rejected credentials."""


class VLMConfigError(VLMEndpointError):
    """The server rejects the shape of our requests (no image input, too few images allowed per
    prompt, ...): every pair would fail the same way, so the run stops at the first one."""


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """Where and how to query the VLM.

    Attributes:
        base_url: OpenAI-style base URL, e.g. http://127.0.0.1:8000/v1; None reads the
            environment variable PLARE_VLM_BASE_URL.
        model: Model name as served.
        api_key_env: Environment variable holding the API key; unset -> "EMPTY" (vLLM
            accepts any key unless started with --api-key). The key is never logged or stored.
        concurrency: Pairs in flight at once (each pair is two sequential requests).
        timeout_s: Per-request deadline for the whole answer (a trickling body counts too).
        max_retries: Retries after the first try, per request (and re-asks of a malformed answer).
        temperature: Sampling temperature (0: deterministic answers, as the reference).
        max_tokens: Completion token limit per request.
        prompt_version: Which prompts/stage{1,2}_<version>.txt to use.
        structured_output: Constrain the stage-2 answer with the server's choice constraint
            (the request key is picked from the server's version, with a fallback on rejection).
        num_keyframes: Frames tiled into each clip's image (said in the stage-1 prompt).
        retry_backoff_s: First backoff delay; doubles per retry, with jitter, capped at 30 s.
        seed: Seed of the backoff jitter.
        both_orders: Ask each pair in both image orders, (A, B) and (B, A), and keep a label
            only when both name the same clip (else unsure): twice the requests, and a model's
            preference for a position becomes unsure labels instead of wrong ones.

    Everything that can change an answer (prompt texts, model, task, temperature, max_tokens,
    structured output, keyframe count, images) is part of a label's cache key. `both_orders` is
    not: each image order is a query of its own, keyed by its images in that order.
    """

    base_url: str | None = None
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 32
    timeout_s: float = 120.0
    max_retries: int = 3
    temperature: float = 0.0
    max_tokens: int = 1024
    prompt_version: str = "v2"
    structured_output: bool = True
    num_keyframes: int = 3
    retry_backoff_s: float = 0.5
    seed: int = 0
    both_orders: bool = False

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}.")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}.")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}.")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}.")
        if self.num_keyframes < 1:
            raise ValueError(f"num_keyframes must be >= 1, got {self.num_keyframes}.")

    def resolved_base_url(self) -> str:
        """`base_url`, or the PLARE_VLM_BASE_URL environment variable; raises ValueError if neither is set."""
        url = self.base_url or os.environ.get(BASE_URL_ENV)
        if not url:
            raise ValueError(
                f"no VLM endpoint: pass --vlm.base-url URL (e.g. http://127.0.0.1:8000/v1; VLMConfig.base_url in "
                f"Python) or set the {BASE_URL_ENV} environment variable, or start a local server with --vlm.launch."
            )
        return url.rstrip("/")

    def api_key(self) -> str:
        return os.environ.get(self.api_key_env) or "EMPTY"

    def max_answer_chars(self) -> int:
        """Longest answer text accepted: far above what `max_tokens` tokens can spell; longer is a broken answer.

        It bounds the answer after any reasoning (the part pasted into stage 2 and stored); the
        reasoning itself is dropped unread, whatever its length."""
        return max(16_384, 64 * self.max_tokens)


@functools.cache
def load_prompts(version: str) -> tuple[str, str]:
    """Returns the (stage 1, stage 2) prompt templates of `version`."""
    folder = importlib.resources.files("plare_jax.labeling") / "prompts"
    try:
        return tuple((folder / f"stage{i}_{version}.txt").read_text() for i in (1, 2))
    except FileNotFoundError:
        raise ValueError(
            f"no prompts for version {version!r}: expected plare_jax/labeling/prompts/stage1_{version}.txt and stage2_{version}.txt"
        ) from None


def _png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fill(template: str, **fields: str) -> str:
    # str.replace, not str.format: stage-1 answers may contain braces.
    for name, value in fields.items():
        template = template.replace("{" + name + "}", value)
    return template


def stage1_content(template: str, *, task: str, num_frames: int, images: tuple[bytes, bytes]) -> list[dict]:
    """The content parts of a stage-1 message: text and the two clips' images.

    A template with `{video_1}` and `{video_2}` markers gets each image at its marker, so
    the model reads "Video 1:", image 1, "Video 2:", image 2, then the questions; a template
    without them (v1) gets both images after its text. `{frames}` becomes "3 frames" (or
    "1 frame"), `{last_timestep}` the last frame's caption number, `{task}` the goal.
    """
    fields = dict(task=task, frames=f"{num_frames} frame{'s' if num_frames != 1 else ''}",
                  last_timestep=str(num_frames - 1))  # fmt: skip
    image_parts = [{"type": "image_url", "image_url": {"url": _png_data_url(png)}} for png in images]
    if "{video_1}" in template and "{video_2}" in template:
        before, rest = template.split("{video_1}", 1)
        middle, after = rest.split("{video_2}", 1)
        texts = [_fill(part, **fields).strip() for part in (before, middle, after)]
        parts = []
        for text, image in zip(texts, [*image_parts, None]):
            if text:
                parts.append({"type": "text", "text": text})
            if image is not None:
                parts.append(image)
        return parts
    return [{"type": "text", "text": _fill(template, **fields)}, *image_parts]


def structured_output_mode_for_version(version: str | None) -> str:
    """The choice-constraint key a vLLM of `version` honours; None (unknown server) -> the current key."""
    if version:
        numbers = [int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3]]
        if len(numbers) >= 2 and tuple(numbers + [0] * (3 - len(numbers))) < _STRUCTURED_OUTPUTS_SINCE:
            return "guided_choice"
    return "structured_outputs"


def _structured_extra(mode: str) -> dict | None:
    if mode == "structured_outputs":
        return {"structured_outputs": {"choice": list(CHOICES)}}
    if mode == "guided_choice":
        return {"guided_choice": list(CHOICES)}
    return None


def _server_root(base_url: str) -> str:
    return re.sub(r"/v\d+$", "", base_url.rstrip("/"))


def fetch_server_version(config: VLMConfig, *, timeout_s: float = 10.0) -> str | None:
    """The server's version from GET {root}/version (vLLM answers {"version": "0.32.0"}); None if it has none."""
    url = _server_root(config.resolved_base_url()) + "/version"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {config.api_key()}"})
    try:
        with urllib.request.urlopen(request, timeout=min(timeout_s, config.timeout_s)) as response:
            body = json.loads(response.read(65_536))
    except (OSError, ValueError):  # no such route, unreachable, not JSON: an unknown server
        return None
    version = body.get("version") if isinstance(body, dict) else None
    return version if isinstance(version, str) else None


class _RequestFailed(Exception):
    """A request still failed after all retries (the pair is left unlabelled and unstored)."""


class _InvalidAnswer(Exception):
    """A 200 answer that cannot be read (no choices, no text, wrong types, too long): retried."""


def _field(obj, name: str):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


@dataclasses.dataclass(frozen=True)
class _Reply:
    """What one chat completion said.

    Attributes:
        answer: The text after any reasoning, storable ("" when the reply was all reasoning).
        reasoning: The reply carried reasoning (a think block, or a reasoning field with text).
        finish_reason: The server's finish_reason when it is text ("length": max_tokens ran out).
    """

    answer: str
    reasoning: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _read_completion(response, max_chars: int) -> _Reply:
    """The answer (after any reasoning), finish reason and token counts of a chat completion, whatever its shape.

    A reply with reasoning but no answer after it (content empty or None beside a reasoning
    field, or an unterminated think block) is read, with answer "": the model did answer, with
    nothing usable, which the caller counts as malformed. A reasoning field that is not text
    counts as no reasoning.

    Raises:
        _InvalidAnswer: no choices, content that is not text, no text at all, or an answer
            longer than `max_chars`.
    """
    choices = _field(response, "choices")
    if not isinstance(choices, list) or not choices:
        raise _InvalidAnswer(f"no choices in the answer ({type(choices).__name__})")
    message = _field(choices[0], "message")
    content = _field(message, "content")
    if content is not None and not isinstance(content, str):
        raise _InvalidAnswer(f"no text in the answer (content {type(content).__name__})")
    thought, answer = split_reasoning(content or "")
    has_field = any(isinstance(value, str) and value.strip() for value in (_field(message, n) for n in REASONING_FIELDS))
    reasoning = bool(thought) or has_field
    if not answer.strip() and not reasoning:
        raise _InvalidAnswer(f"no text in the answer (content {type(content).__name__})")
    if len(answer) > max_chars:
        raise _InvalidAnswer(f"answer of {len(answer)} characters (limit {max_chars})")
    usage = _field(response, "usage")
    counts = [_field(usage, name) for name in ("prompt_tokens", "completion_tokens")]
    counts = [n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0 for n in counts]
    finish = _field(choices[0], "finish_reason")
    # Lone surrogates and the like become escapes: the text must survive SQLite and the stage-2 request.
    return _Reply(answer=storable_text(answer) if answer.strip() else "", reasoning=reasoning,
                  finish_reason=storable_text(finish, max_chars=40) if isinstance(finish, str) else None,
                  prompt_tokens=counts[0], completion_tokens=counts[1])  # fmt: skip


def _status_error_message(err: openai.APIStatusError) -> str:
    message = err.message
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message", message) if isinstance(inner, dict) else str(inner)
    return storable_text(str(message), max_chars=2000)


@dataclasses.dataclass
class _RunStats:
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list = dataclasses.field(default_factory=list)
    # Why pairs failed ("HTTP 400: <server message>", "TimeoutError ..."): the coverage error quotes them.
    failure_reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Replies that were all reasoning, with no answer after it (usually: max_tokens ran out while thinking).
    reasoning_without_answer: int = 0


def _query_images(images, both_orders: bool) -> list[tuple[bytes, bytes]]:
    """The image pairs to ask: every pair as given, then, with `both_orders`, every pair swapped."""
    pairs = [(a, b) for a, b in images]
    return pairs + [(b, a) for a, b in pairs] if both_orders else pairs


def combine_orders(first, first_status, swapped, swapped_status) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One label per pair from its answers in both image orders.

    Args:
        first: `[P]` answers to the pairs as given, (A, B), in {0, 1, -1}.
        first_status: `[P]` their statuses (`PAIR_STATUSES`).
        swapped: `[P]` answers to the swapped pairs, (B, A), in that query's own terms
            (0: the clip shown first, B, is better).
        swapped_status: `[P]` their statuses.

    Returns:
        (preferences `[P]` int8 in terms of (A, B), statuses `[P]`, disagree `[P]` bool):
        - both orders sure and naming the same clip: that label, "ok";
        - both sure but naming different clips: -1, "unsure", and `disagree` is True: the
          answer followed the position, not the clips;
        - either order unsure (and both answered): -1, "unsure";
        - either order failed: -1, "failed"; else either malformed: -1, "malformed". A pair is
          answered only when both its orders are: a label from the one answer would quietly
          bring back the position bias that asking both orders cancels, and the coverage gate
          must count the missing answer (even where the other order said unsure, which the
          missing one could not have changed). Failed ranks above malformed: no answer at all
          is the server's trouble and has a failure reason to show. The order that did answer
          is stored all the same, so a re-run asks only the missing one.
    """
    first, swapped = np.asarray(first), np.asarray(swapped)
    first_status, swapped_status = np.asarray(first_status), np.asarray(swapped_status)
    mapped = np.where(swapped == UNSURE, UNSURE, 1 - swapped)  # the swapped answer in (A, B) terms
    both_sure = (first_status == PAIR_OK) & (swapped_status == PAIR_OK)
    agree = both_sure & (first == mapped)
    status = np.where(agree, PAIR_OK, PAIR_UNSURE).astype(_STATUS_DTYPE)
    either = lambda name: (first_status == name) | (swapped_status == name)  # noqa: E731
    status = np.where(either(PAIR_MALFORMED), PAIR_MALFORMED, status)
    status = np.where(either(PAIR_FAILED), PAIR_FAILED, status)
    return np.where(agree, first, UNSURE).astype(np.int8), status, both_sure & ~agree


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def answer_stats(answers, statuses) -> dict:
    """How often the model named the clip shown first: the sign of a position preference.

    Counted over queries (with both orders, each pair's two), from sure answers only (status
    "ok"). With both orders every clip is shown first as often as second, so a model that
    reads the clips says "first" about half the time whatever the data; far from 0.5 it
    prefers a position. With one order the share also follows the data's own balance.

    Returns:
        {"first_answers", "sure_answers", "first_answer_share" (None without sure answers)}.
    """
    sure = np.asarray(statuses) == PAIR_OK
    first = int((sure & (np.asarray(answers) == 0)).sum())
    return {"first_answers": first, "sure_answers": int(sure.sum()), "first_answer_share": _share(first, int(sure.sum()))}


def _no_answer_hint(reply: _Reply) -> str:
    """Why a reply gave no answer, and what to do when the reasoning used up the tokens."""
    if not reply.reasoning:
        return "(an empty answer)"
    if reply.finish_reason == "length":
        return ("(the reply was all reasoning and stopped at max_tokens: raise --vlm.max-tokens "
                "(VLMConfig.max_tokens) so the model can finish thinking and answer)")  # fmt: skip
    return "(the reply was all reasoning, with no answer after it)"


class VLMLabeler:
    """Labels pairs with a VLM behind an OpenAI-compatible endpoint.

    Args:
        config: Endpoint, model and request settings.
        store: Label cache; stored pairs are not queried again and new labels are
            committed one by one. None: no cache (every call queries the server).
    """

    name = "vlm"

    def __init__(self, config: VLMConfig, *, store: LabelStore | None = None):
        self.config = config
        self.store = store
        self.stage1_template, self.stage2_template = load_prompts(config.prompt_version)
        self._rng = np.random.default_rng(config.seed)
        # The stage-2 constraint key in use; found once from the server's version, changed on rejection.
        self.structured_mode: str | None = None if config.structured_output else "none"
        self._rejected_keys: set[str] = set()

    def query_settings(self) -> dict:
        """Everything besides images, model and task that decides an answer (part of the cache key)."""
        c = self.config
        prompts = hashlib.sha256((self.stage1_template + "\0" + self.stage2_template).encode()).hexdigest()
        return {
            "prompts_sha256": prompts,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
            "structured_output": c.structured_output,
            "num_keyframes": c.num_keyframes,
        }

    def keys(self, batch: PairBatch) -> list[str]:
        """Cache keys of the pairs of `batch` in their given image order, (A, B)."""
        return self._keys(batch.task_text, batch.images)

    def query_keys(self, batch: PairBatch) -> list[str]:
        """Cache keys of every query of `batch`: the (A, B) keys of its pairs, then, with
        `both_orders`, their (B, A) keys (pair i's swapped query is at i + len(batch))."""
        return self._keys(batch.task_text, _query_images(batch.images, self.config.both_orders))

    def _keys(self, task: str, images) -> list[str]:
        c = self.config
        settings = self.query_settings()
        return [
            label_key(a, b, prompt_version=c.prompt_version, model=c.model, task_text=task, settings=settings)
            for a, b in images
        ]

    def label(self, batch: PairBatch, *, progress: bool = True) -> LabelResult:
        """Labels `batch` (blocking); see `alabel` for use inside a running event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.alabel(batch, progress=progress))
        raise RuntimeError("VLMLabeler.label() was called inside a running event loop; use `await labeler.alabel(batch)`.")

    def _client(self) -> openai.AsyncOpenAI:
        c = self.config
        return openai.AsyncOpenAI(base_url=c.resolved_base_url(), api_key=c.api_key(), timeout=c.timeout_s, max_retries=0)

    async def _detect_structured_mode(self) -> None:
        if self.structured_mode is None:
            version = await asyncio.to_thread(fetch_server_version, self.config)
            self.structured_mode = structured_output_mode_for_version(version)
            logger.info("VLM server version %s: stage-2 choice constraint sent as %r", version, self.structured_mode)

    async def alabel(self, batch: PairBatch, *, progress: bool = True) -> LabelResult:
        """Labels `batch`: stored queries from the store, the rest from the server.

        Returns:
            `LabelResult` with `[P]` int8 preferences and `[P]` statuses ("ok", "unsure",
            "malformed", "failed"); malformed and failed queries are -1 and not stored, so a
            re-run asks again. With `both_orders` a pair's label and status combine its two
            queries (`combine_orders`). Stats count pairs, except `queries`, `cache_hits` and
            the answer counts (`first_answers`, `sure_answers`), which count queries (one
            image order of a pair; with one order, queries are pairs).

        Raises:
            VLMEndpointError: wrong model or API key (at the first answer saying so).
            VLMConfigError: the server cannot take the image requests (at the first answer saying so).
        """
        if batch.images is None:
            raise ValueError("VLMLabeler needs PairBatch.images ((png, png) per pair).")
        c = self.config
        start = time.perf_counter()
        images = _query_images(batch.images, c.both_orders)  # query q: pair q % P, swapped from q >= P
        keys = self._keys(batch.task_text, images)
        answers = np.full(len(images), UNSURE, np.int8)
        answer_status = np.full(len(images), PAIR_FAILED, dtype=_STATUS_DTYPE)
        cached = self.store.get_many(keys) if self.store is not None else {}
        todo: dict[str, list[int]] = {}  # identical queries in one batch are asked once
        for q, key in enumerate(keys):
            record = cached.get(key)
            if record is not None and not record.get("malformed"):  # older stores kept malformed answers: ask again
                answers[q] = record["preference"]
                answer_status[q] = PAIR_UNSURE if record["preference"] == UNSURE else PAIR_OK
            else:
                todo.setdefault(key, []).append(q)
        # Queries answered without a request: stored ones, and repeats of a query within the batch.
        cache_hits = len(images) - len(todo)

        run = _RunStats()
        if todo:
            await self._detect_structured_mode()
            client = self._client()
            queue: asyncio.Queue = asyncio.Queue()
            for key, rows in todo.items():
                queue.put_nowait((key, rows))
            bar = tqdm(total=len(images), initial=len(images) - sum(map(len, todo.values())), desc="VLM labels",
                       unit="query" if c.both_orders else "pair", disable=not progress)  # fmt: skip

            async def worker():
                while True:
                    try:
                        key, rows = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    try:
                        answers[rows], answer_status[rows] = await self._label_query(
                            client, key, images[rows[0]], batch.task_text, run
                        )
                    except VLMEndpointError:
                        raise
                    except Exception as err:  # unforeseen: this query fails (and is counted), the run goes on
                        logger.warning("query %s left unanswered by an unexpected error", key[:12], exc_info=True)
                        run.failure_reasons[storable_text(f"unexpected {type(err).__name__}: {err}", max_chars=200)] += 1
                        answers[rows], answer_status[rows] = UNSURE, PAIR_FAILED
                    bar.update(len(rows))

            try:
                async with client:
                    workers = [asyncio.create_task(worker()) for _ in range(min(c.concurrency, len(todo)))]
                    try:
                        await asyncio.gather(*workers)
                    except BaseException:
                        # A configuration error (or Ctrl-C) stops the run: stop the other
                        # workers too. Labels stored so far stay stored.
                        for task in workers:
                            task.cancel()
                        await asyncio.gather(*workers, return_exceptions=True)
                        raise
            finally:
                bar.close()
        wall_s = time.perf_counter() - start
        n_pairs = len(batch)
        order_stats: dict = {}
        if c.both_orders:
            prefs, status, disagree = combine_orders(answers[:n_pairs], answer_status[:n_pairs],
                                                     answers[n_pairs:], answer_status[n_pairs:])  # fmt: skip
            both_sure = (answer_status[:n_pairs] == PAIR_OK) & (answer_status[n_pairs:] == PAIR_OK)
            order_stats = {
                "order_compared": int(both_sure.sum()),
                "order_agreements": int((both_sure & ~disagree).sum()),
                "order_disagreements": int(disagree.sum()),
            }
            order_stats["order_consistency"] = _share(order_stats["order_agreements"], order_stats["order_compared"])
        else:
            prefs, status = answers, answer_status
        # Pairs with at least one query sent to the server (the throughput's unit).
        sent = set(todo)
        orders = 2 if c.both_orders else 1
        pair_keys = zip(*(keys[o * n_pairs:(o + 1) * n_pairs] for o in range(orders)))
        queried = len({pair for pair in pair_keys if not sent.isdisjoint(pair)})
        lat = np.asarray(run.latencies) if run.latencies else np.full(1, np.nan)
        counts = {name: int((status == name).sum()) for name in PAIR_STATUSES}
        stats = {
            "labeler": self.name,
            "model": c.model,
            "prompt_version": c.prompt_version,
            "structured_output_mode": self.structured_mode,
            "both_orders": c.both_orders,
            "pairs": n_pairs,
            "queries": len(images),
            "queried_pairs": queried,
            "cache_hits": cache_hits,
            "requests": run.requests,
            "retries": run.retries,
            "labelled": counts[PAIR_OK],
            "unsure_answers": counts[PAIR_UNSURE],
            "malformed": counts[PAIR_MALFORMED],
            "failed": counts[PAIR_FAILED],
            "failure_reasons": dict(run.failure_reasons.most_common(5)),
            "unsure": int((prefs == UNSURE).sum()),
            **answer_stats(answers, answer_status),
            **order_stats,
            "reasoning_without_answer": run.reasoning_without_answer,
            "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens,
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p90_s": float(np.percentile(lat, 90)),
            "latency_p99_s": float(np.percentile(lat, 99)),
            "wall_s": wall_s,
            "pairs_per_s": queried / wall_s if queried else 0.0,
            "requests_per_s": run.requests / wall_s if run.requests else 0.0,
            "concurrency": c.concurrency,
        }
        return LabelResult(preferences=prefs, stats=stats, status=status)

    async def _label_query(self, client, key: str, images: tuple[bytes, bytes], task: str, run: _RunStats) -> tuple[int, str]:
        """Both stages for one query (a pair in one image order); stores its answer and returns
        (answer, status). Failed or malformed queries return -1 and are not stored.

        A stage whose reply is all reasoning (no answer after it) is asked again, up to
        `max_retries` times, like an unreadable stage-2 answer; then the query is malformed.
        """
        c = self.config
        pair_start = time.perf_counter()
        tokens = [0, 0]
        content = stage1_content(self.stage1_template, task=task, num_frames=c.num_keyframes, images=images)
        try:
            for attempt in range(c.max_retries + 1):
                if attempt:
                    run.retries += 1
                stage1 = await self._complete(client, [{"role": "user", "content": content}], run, tokens)
                if stage1.answer:
                    break
            if not stage1.answer:
                logger.warning("query %s left unlabelled: stage 1 had no description %s", key[:12], _no_answer_hint(stage1))
                return UNSURE, PAIR_MALFORMED
            stage1_text = stage1.answer  # the description without the model's reasoning
            stage2_messages = [
                {"role": "user", "content": _fill(self.stage2_template, task=task, stage1_answer=stage1_text)}
            ]
            choice, stage2 = None, _Reply("")
            for attempt in range(c.max_retries + 1):
                if attempt:
                    run.retries += 1
                stage2 = await self._complete(client, stage2_messages, run, tokens, stage2=True)
                choice = parse_choice(stage2.answer)
                if choice is not None:
                    break
        except _RequestFailed as err:
            logger.warning("query %s left unlabelled: %s", key[:12], err)
            run.failure_reasons[str(err)[:200]] += 1
            return UNSURE, PAIR_FAILED
        if choice is None:
            detail = _no_answer_hint(stage2) if not stage2.answer else f"malformed answer {stage2.answer[:200]!r}"
            logger.warning("query %s left unlabelled: %s", key[:12], detail)
            return UNSURE, PAIR_MALFORMED
        if self.store is not None:
            self.store.put(
                key,
                {
                    "preference": int(choice),
                    "model": c.model,
                    "prompt_version": c.prompt_version,
                    "task_text": task,
                    "stage1_text": stage1_text,
                    "stage2_text": stage2.answer,
                    "malformed": False,
                    "latency_s": time.perf_counter() - pair_start,
                    "prompt_tokens": tokens[0],
                    "completion_tokens": tokens[1],
                },
            )
        return int(choice), (PAIR_UNSURE if choice == UNSURE else PAIR_OK)

    def _on_rejected_structured_key(self, mode: str, message: str) -> bool:
        """After a 400: if it names the constraint key `mode` we sent, switch to the next way
        (the other key, then none) and return True so the request is sent again."""
        if mode == "none" or mode not in message:
            return False
        if mode not in self._rejected_keys:
            self._rejected_keys.add(mode)
            remaining = [k for k in STRUCTURED_KEYS if k not in self._rejected_keys]
            self.structured_mode = remaining[0] if remaining else "none"
            logger.warning("the VLM server rejected %r (%s); sending %r instead", mode, message[:200], self.structured_mode)
        return True

    async def _complete(self, client, messages: list, run: _RunStats, tokens: list, *, stage2: bool = False,
                        strict: bool = False) -> _Reply:  # fmt: skip
        """One chat completion with retries on transient errors and unreadable answers; returns the
        reply (its answer is "" when the reply was all reasoning: an answer, not retried here).

        Args:
            stage2: Send the choice constraint.
            strict: Any non-retryable 4xx is a configuration error (the preflight request).
        """
        c = self.config
        last_error: Exception | str | None = None
        attempt, key_fallbacks = 0, 0
        while attempt <= c.max_retries:
            if attempt:
                run.retries += 1
                delay = min(30.0, c.retry_backoff_s * 2 ** (attempt - 1)) * (0.5 + self._rng.random())
                delay = max(delay, _retry_after_s(last_error))
                await asyncio.sleep(delay)
            attempt += 1
            mode = self.structured_mode if stage2 else "none"
            run.requests += 1
            start = time.perf_counter()
            try:
                # wait_for: the client's timeout bounds each read, not a body that trickles in forever.
                response = await asyncio.wait_for(
                    client.chat.completions.create(
                        model=c.model,
                        messages=messages,
                        temperature=c.temperature,
                        max_tokens=c.max_tokens,
                        extra_body=_structured_extra(mode),
                    ),
                    timeout=c.timeout_s,
                )
                reply = _read_completion(response, c.max_answer_chars())
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
                # Configuration errors: every other request would fail the same way.
                raise VLMEndpointError(
                    f"the VLM server at {c.resolved_base_url()} rejected the request ({err.status_code}): "
                    f"{_status_error_message(err)}. Check the model name ({c.model!r}) and the API key in ${c.api_key_env}."
                ) from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError, TimeoutError) as err:  # fmt: skip
                last_error = err
                continue
            except openai.APIStatusError as err:
                if err.status_code >= 500 or err.status_code in (408, 409):
                    last_error = err
                    continue
                message = _status_error_message(err)
                if err.status_code == 400 and stage2 and key_fallbacks < 2 and self._on_rejected_structured_key(mode, message):
                    key_fallbacks += 1
                    attempt -= 1  # the server told us what it wants: not a failed try
                    continue
                if strict or (err.status_code in (400, 413, 422) and _CONFIG_ERROR_RE.search(message)):
                    raise VLMConfigError(
                        f"the VLM server at {c.resolved_base_url()} rejected a labeling request (HTTP {err.status_code}): "
                        f"{message}. {_config_error_hint(message, c)}"
                    ) from None
                raise _RequestFailed(f"HTTP {err.status_code}: {message}") from None
            except Exception as err:  # noqa: BLE001 - body not JSON / not UTF-8, wrong types, ...: this pair, never the run
                last_error = err
                continue
            run.latencies.append(time.perf_counter() - start)
            run.prompt_tokens += reply.prompt_tokens
            run.completion_tokens += reply.completion_tokens
            tokens[0] += reply.prompt_tokens
            tokens[1] += reply.completion_tokens
            if not reply.answer:
                run.reasoning_without_answer += 1
            return reply
        detail = storable_text(f"{type(last_error).__name__}: {last_error}", max_chars=300)
        raise _RequestFailed(f"{detail} (after {attempt} tries)")

    async def _preflight(self, num_images: int) -> dict:
        await self._detect_structured_mode()
        pngs = [_tiny_png(i) for i in range(num_images)]
        content = stage1_content(self.stage1_template, task="check the endpoint", num_frames=self.config.num_keyframes,
                                 images=(pngs[0], pngs[-1]))  # fmt: skip
        if num_images != 2:  # another image count on purpose (e.g. to see the server's limit): the texts, then the images
            content = [part for part in content if part["type"] == "text"] + [
                {"type": "image_url", "image_url": {"url": _png_data_url(png)}} for png in pngs
            ]
        run = _RunStats()
        async with self._client() as client:
            try:
                await self._complete(client, [{"role": "user", "content": content}], run, [0, 0], strict=True)
            except _RequestFailed as err:
                raise VLMEndpointError(
                    f"the VLM server at {self.config.resolved_base_url()} did not answer a test request: {err}. "
                    "Check that it is up and not overloaded (its log says more)."
                ) from None
        return {"structured_output_mode": self.structured_mode, "requests": run.requests, "retries": run.retries}


def _tiny_png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), ((40 + 80 * seed) % 256, 90, 140)).save(buf, format="PNG")
    return buf.getvalue()


def _config_error_hint(message: str, config: VLMConfig) -> str:
    lowered = message.lower()
    if "at most" in lowered or "limit" in lowered or "parameter=image" in lowered:
        return ("Each stage-1 request carries 2 images: start vLLM with --limit-mm-per-prompt '{\"image\": 2}' "
                "(older vLLM: --limit-mm-per-prompt image=2).")  # fmt: skip
    if "multimodal" in lowered or "multi-modal" in lowered or "image" in lowered or "vision" in lowered or "text" in lowered:
        return f"Serve a vision-language model (e.g. Qwen/Qwen2.5-VL-7B-Instruct) and set its name as the model (now {config.model!r})."
    return "Fix the server or the request settings (model, max_tokens, prompt) and run again."


def preflight(config: VLMConfig, *, num_images: int = 2) -> dict:
    """Sends one stage-1-shaped request (the real prompt, `num_images` tiny PNGs) before any data work.

    It asks for the configured max_tokens, so a server whose context cannot hold prompt and answer
    fails here too, once, rather than on every pair.

    Returns:
        {"structured_output_mode": the stage-2 constraint key the server will get, "requests", "retries"}.

    Raises:
        VLMConfigError: the server rejects the request (HTTP 4xx: no image input, too few images
            per prompt, ...), with the server's message and what to change.
        VLMEndpointError: wrong model or key, or no answer after the retries.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    return asyncio.run(VLMLabeler(config)._preflight(num_images))


def _retry_after_s(error) -> float:
    """Seconds a 429/503 answer asked us to wait (Retry-After header), capped at 60; 0 if none."""
    response = getattr(error, "response", None)
    if response is None:
        return 0.0
    try:
        return min(60.0, max(0.0, float(response.headers.get("retry-after", 0))))
    except (TypeError, ValueError):  # an HTTP date instead of seconds: fall back to our backoff
        return 0.0


def check_endpoint(config: VLMConfig, *, timeout_s: float = 10.0) -> None:
    """Fails fast if the endpoint is unreachable or does not serve `config.model`.

    Raises:
        VLMEndpointError: with what to do about it.
    """
    url = config.resolved_base_url()
    client = openai.OpenAI(base_url=url, api_key=config.api_key(), timeout=timeout_s, max_retries=0)
    try:
        served = [m.id for m in client.models.list()]
    except openai.AuthenticationError:
        raise VLMEndpointError(f"{url} rejected the API key from ${config.api_key_env}; set it to the server's key.") from None
    except openai.APIConnectionError:
        raise VLMEndpointError(
            f"cannot reach a VLM server at {url}. Start one (e.g. `vllm serve {config.model}`, or "
            "plare_jax.labeling.launcher.launch_vllm) or fix the base URL."
        ) from None
    except openai.APIStatusError as err:
        raise VLMEndpointError(f"{url}/models answered HTTP {err.status_code}; is this an OpenAI-compatible server?") from None
    finally:
        client.close()
    if config.model not in served:
        raise VLMEndpointError(f"{url} does not serve model {config.model!r}; it serves {served}. "
                               "Pass --vlm.model NAME (VLMConfig.model) with one of those.")
