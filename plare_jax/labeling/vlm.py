"""VLM labeler over the OpenAI-compatible chat-completions API (vLLM or any such server).

Each pair costs two requests, as in PLARE: stage 1 sends both clips' images and
the task text and asks for a description of each clip and whether they differ in
achieving the goal; stage 2 (text only, stage-1 answer pasted in) asks which clip
better achieves the goal, constrained to "0" / "1" / "-1" by the server's
structured output when it has one, and parsed robustly when it does not.

Requests run concurrently (bounded by `VLMConfig.concurrency`), are retried with
exponential backoff and jitter on 429 / 5xx / timeouts / connection errors, and
every label is committed to the `LabelStore` as soon as it arrives, so a re-run
sends no request for a stored pair and a killed run resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import importlib.resources
import logging
import os
import re
import time

import numpy as np
import openai
from tqdm.auto import tqdm

from plare_jax.labeling.base import UNSURE, LabelResult, PairBatch
from plare_jax.labeling.store import LabelStore, label_key

logger = logging.getLogger(__name__)

BASE_URL_ENV = "PLARE_VLM_BASE_URL"
CHOICES = ("0", "1", "-1")
# Task texts of the four tasks of the PLARE paper (MetaWorld names without version suffix).
TASK_TEXTS = {
    "drawer-open": "open the drawer",
    "sweep-into": "place the green cube so that it lies on the square hole",
    "plate-slide": "place the black plate so that it lies inside the goal",
    "door-open": "open the door of the safe",
}


class VLMEndpointError(RuntimeError):
    """The VLM server cannot be used: unreachable, wrong model, or rejected credentials."""


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
        timeout_s: Per-request timeout.
        max_retries: Retries after the first try, per request (and re-asks of a malformed answer).
        temperature: Sampling temperature (0: deterministic answers, as the reference).
        max_tokens: Completion token limit per request.
        prompt_version: Which prompts/stage{1,2}_<version>.txt to use; part of the cache key.
        structured_output: Constrain the stage-2 answer with vLLM's choice constraint.
        retry_backoff_s: First backoff delay; doubles per retry, with jitter, capped at 30 s.
        seed: Seed of the backoff jitter.
    """

    base_url: str | None = None
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 32
    timeout_s: float = 120.0
    max_retries: int = 3
    temperature: float = 0.0
    max_tokens: int = 1024
    prompt_version: str = "v1"
    structured_output: bool = True
    retry_backoff_s: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}.")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}.")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}.")

    def resolved_base_url(self) -> str:
        """`base_url`, or the PLARE_VLM_BASE_URL environment variable; raises ValueError if neither is set."""
        url = self.base_url or os.environ.get(BASE_URL_ENV)
        if not url:
            raise ValueError(
                f"no VLM endpoint: set VLMConfig.base_url (e.g. http://127.0.0.1:8000/v1) or the {BASE_URL_ENV} "
                "environment variable, or start a local server with plare_jax.labeling.launcher.launch_vllm."
            )
        return url.rstrip("/")

    def api_key(self) -> str:
        return os.environ.get(self.api_key_env) or "EMPTY"


def task_text(task: str, override: str | None = None) -> str:
    """The goal text sent to the VLM for a MetaWorld task.

    Args:
        task: Task name, with or without version suffix ("drawer-open", "drawer-open-v3").
        override: If given, returned as is (user-chosen wording).

    Returns:
        The paper's text for its four tasks; otherwise a generic text derived from
        the name (with a logged notice, since wording affects VLM accuracy).
    """
    if override:
        return override
    name = re.sub(r"-v\d+$", "", task.strip())
    if name in TASK_TEXTS:
        return TASK_TEXTS[name]
    generic = "complete the task: " + name.replace("-", " ").replace("_", " ")
    logger.warning("no built-in task text for %r; using %r (pass an override for better labels)", task, generic)
    return generic


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


_ANSWER_RE = re.compile(r"answer(?:\s+is)?[^\w\-]{0,6}(-\s?1|0|1)(?!\d|\.\d)", re.IGNORECASE)
# A standalone 0 / 1 / -1 that is not a clip's name ("Video 1" names the first clip, not answer 1).
_TOKEN_RE = re.compile(r"(?<![\w.\-])(?<!video )(?<!clip )(-1|0|1)(?!\d|\.\d)", re.IGNORECASE)


def parse_choice(text: str | None) -> int | None:
    """Reads a 0 / 1 / -1 answer out of a model reply.

    Exact answers ("1"), sentences ("The answer is 1.") and quoted or formatted
    answers work; a reply that names several different values ("either 0 or 1")
    or none is ambiguous.

    Returns:
        0, 1 or -1, or None if the reply is malformed.
    """
    if text is None:
        return None
    stripped = text.strip().strip("\"'`*.[](){} \n")
    if stripped in CHOICES:
        return int(stripped)
    explicit = _ANSWER_RE.findall(text)
    if explicit:
        return int(explicit[-1].replace(" ", ""))
    found = set(_TOKEN_RE.findall(text))
    if len(found) == 1:
        return int(found.pop())
    return None


def _png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fill(template: str, **fields: str) -> str:
    # str.replace, not str.format: stage-1 answers may contain braces.
    for name, value in fields.items():
        template = template.replace("{" + name + "}", value)
    return template


class _RequestFailed(Exception):
    """A request still failed after all retries (the pair becomes unsure, unstored)."""


@dataclasses.dataclass
class _RunStats:
    requests: int = 0
    retries: int = 0
    malformed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list = dataclasses.field(default_factory=list)


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

    def keys(self, batch: PairBatch) -> list[str]:
        """Cache keys of the pairs of `batch`, in order."""
        c = self.config
        return [
            label_key(a, b, prompt_version=c.prompt_version, model=c.model, task_text=batch.task_text)
            for a, b in batch.images
        ]

    def label(self, batch: PairBatch, *, progress: bool = True) -> LabelResult:
        """Labels `batch` (blocking); see `alabel` for use inside a running event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.alabel(batch, progress=progress))
        raise RuntimeError("VLMLabeler.label() was called inside a running event loop; use `await labeler.alabel(batch)`.")

    async def alabel(self, batch: PairBatch, *, progress: bool = True) -> LabelResult:
        """Labels `batch`: stored pairs from the store, the rest from the server.

        Returns:
            `LabelResult` with `[P]` int8 preferences; pairs whose requests failed after
            all retries are -1 (and not stored, so a re-run asks again).
        """
        if batch.images is None:
            raise ValueError("VLMLabeler needs PairBatch.images ((png, png) per pair).")
        c = self.config
        start = time.perf_counter()
        keys = self.keys(batch)
        prefs = np.full(len(batch), UNSURE, np.int8)
        cached = self.store.get_many(keys) if self.store is not None else {}
        todo: dict[str, list[int]] = {}  # identical pairs in one batch are asked once
        for i, key in enumerate(keys):
            if key in cached:
                prefs[i] = cached[key]["preference"]
            else:
                todo.setdefault(key, []).append(i)
        # Pairs answered without a request: stored ones, and repeats of a pair within the batch.
        cache_hits = len(batch) - len(todo)

        run = _RunStats()
        if todo:
            client = openai.AsyncOpenAI(
                base_url=c.resolved_base_url(), api_key=c.api_key(), timeout=c.timeout_s, max_retries=0
            )
            queue: asyncio.Queue = asyncio.Queue()
            for key, rows in todo.items():
                queue.put_nowait((key, rows))
            bar = tqdm(total=len(batch), initial=cache_hits, desc="VLM labels", unit="pair", disable=not progress)

            async def worker():
                while True:
                    try:
                        key, rows = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    images = batch.images[rows[0]]
                    prefs[rows] = await self._label_pair(client, key, images, batch.task_text, run)
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
        queried = len(todo)
        lat = np.asarray(run.latencies) if run.latencies else np.full(1, np.nan)
        stats = {
            "labeler": self.name,
            "model": c.model,
            "prompt_version": c.prompt_version,
            "pairs": len(batch),
            "queried_pairs": queried,
            "cache_hits": cache_hits,
            "requests": run.requests,
            "retries": run.retries,
            "malformed": run.malformed,
            "failed": run.failed,
            "unsure": int((prefs == UNSURE).sum()),
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
        return LabelResult(preferences=prefs, stats=stats)

    async def _label_pair(self, client, key: str, images: tuple[bytes, bytes], task: str, run: _RunStats) -> int:
        """Both stages for one pair; stores and returns the label (-1 if the requests failed)."""
        c = self.config
        pair_start = time.perf_counter()
        tokens = [0, 0]
        stage1_messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": _fill(self.stage1_template, task=task)},
                    {"type": "image_url", "image_url": {"url": _png_data_url(images[0])}},
                    {"type": "image_url", "image_url": {"url": _png_data_url(images[1])}},
                ],
            }
        ]
        try:
            stage1_text = await self._complete(client, stage1_messages, {}, run, tokens)
            stage2_messages = [
                {"role": "user", "content": _fill(self.stage2_template, task=task, stage1_answer=stage1_text)}
            ]
            extra = {}
            if c.structured_output:
                # vLLM < 0.12 reads guided_choice; newer versions read structured_outputs.
                # Each ignores the field it does not know.
                extra = {"guided_choice": list(CHOICES), "structured_outputs": {"choice": list(CHOICES)}}
            choice, stage2_text = None, ""
            for attempt in range(c.max_retries + 1):
                if attempt:
                    run.retries += 1
                stage2_text = await self._complete(client, stage2_messages, extra, run, tokens)
                choice = parse_choice(stage2_text)
                if choice is not None:
                    break
        except _RequestFailed as err:
            run.failed += 1
            logger.warning("pair %s left unsure: %s", key[:12], err)
            return UNSURE
        malformed = choice is None
        if malformed:
            run.malformed += 1
            choice = UNSURE
        if self.store is not None:
            self.store.put(
                key,
                {
                    "preference": int(choice),
                    "model": c.model,
                    "prompt_version": c.prompt_version,
                    "task_text": task,
                    "stage1_text": stage1_text,
                    "stage2_text": stage2_text,
                    "malformed": malformed,
                    "latency_s": time.perf_counter() - pair_start,
                    "prompt_tokens": tokens[0],
                    "completion_tokens": tokens[1],
                },
            )
        return int(choice)

    async def _complete(self, client, messages: list, extra_body: dict, run: _RunStats, tokens: list) -> str:
        """One chat completion with retries on transient errors; returns the answer text."""
        c = self.config
        last_error: Exception | None = None
        for attempt in range(c.max_retries + 1):
            if attempt:
                run.retries += 1
                delay = min(30.0, c.retry_backoff_s * 2 ** (attempt - 1)) * (0.5 + self._rng.random())
                delay = max(delay, _retry_after_s(last_error))
                await asyncio.sleep(delay)
            run.requests += 1
            start = time.perf_counter()
            try:
                response = await client.chat.completions.create(
                    model=c.model,
                    messages=messages,
                    temperature=c.temperature,
                    max_tokens=c.max_tokens,
                    extra_body=extra_body or None,
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
                # Configuration errors: every other request would fail the same way.
                raise VLMEndpointError(
                    f"the VLM server at {c.resolved_base_url()} rejected the request ({err.status_code}): {err.message}. "
                    f"Check the model name ({c.model!r}) and the API key in ${c.api_key_env}."
                ) from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                last_error = err
                continue
            except openai.APIStatusError as err:
                if err.status_code >= 500 or err.status_code in (408, 409):
                    last_error = err
                    continue
                raise _RequestFailed(f"HTTP {err.status_code}: {err.message}") from None
            except openai.OpenAIError as err:  # e.g. an unparseable response: this pair only, never the run
                last_error = err
                continue
            run.latencies.append(time.perf_counter() - start)
            if response.usage is not None:
                run.prompt_tokens += response.usage.prompt_tokens
                run.completion_tokens += response.usage.completion_tokens
                tokens[0] += response.usage.prompt_tokens
                tokens[1] += response.usage.completion_tokens
            # An empty choice list or null content reads as "" (malformed), never as a crash.
            return (response.choices[0].message.content if response.choices else None) or ""
        raise _RequestFailed(f"{type(last_error).__name__} after {c.max_retries + 1} tries: {last_error}")


def _retry_after_s(error: Exception | None) -> float:
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
        raise VLMEndpointError(f"{url} does not serve model {config.model!r}; it serves {served}. Set VLMConfig.model.")
