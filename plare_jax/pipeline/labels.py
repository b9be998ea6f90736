"""The labeling stage: choose the labeler, label segment pairs (scripted teacher or VLM), report
how the labels compare with the teacher, and stop before training when too many are missing."""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable
from typing import Literal

import numpy as np

from plare_jax.data.segments import SegmentPairs
from plare_jax.data.keyframes import encode_png
from plare_jax.interrupts import raise_if_stopped
from plare_jax.labeling import launcher as vllm_launcher
from plare_jax.labeling.base import UNSURE, PairBatch, check_preferences
from plare_jax.labeling.coverage import check_label_coverage
from plare_jax.labeling.noise import TeacherNoise, calibrate_noise, label_agreement, noise_free_level
from plare_jax.labeling.report import format_report, labeling_report
from plare_jax.labeling.scripted import ScriptedTeacher
from plare_jax.labeling.store import LabelStore
from plare_jax.labeling.vlm import VLMConfig, VLMLabeler, check_endpoint, preflight
from plare_jax.pipeline.config import ConfigError, SharedOptions

VLM_BASE_URL_ENV = "PLARE_VLM_BASE_URL"


@dataclasses.dataclass(frozen=True)
class LabelerChoice:
    kind: Literal["vlm", "scripted"]
    reason: str
    base_url: str | None = None
    launch: bool = False


def choose_labeler(config: SharedOptions) -> LabelerChoice:
    """Resolve --labeler auto/vlm/scripted to what will run, checking a given endpoint at once."""
    if config.labeler == "scripted":
        return LabelerChoice("scripted", "requested with --labeler scripted")
    base_url = config.vlm.base_url or os.environ.get(VLM_BASE_URL_ENV)
    if base_url:
        check_endpoint(vlm_config(config, base_url))  # raises VLMEndpointError with a clear message
        # One real stage-1 request (two tiny images): a server that takes no images, or too few per
        # prompt, stops the run here with its own message (VLMConfigError), before any data work.
        preflight(vlm_config(config, base_url))
        return LabelerChoice("vlm", f"endpoint {base_url}", base_url=base_url)
    has_vllm = vllm_launcher.find_vllm(config.vlm.executable) is not None
    if config.vlm.launch and not has_vllm:
        raise ConfigError(f"--vlm.launch needs the `vllm` executable ({config.vlm.executable!r} not found): "
                          "pip install \"plare-jax[vlm]\" (CUDA only), pass --vlm.executable PATH of "
                          "another build, or pass --vlm.base-url of a running server")
    if config.vlm.launch or (config.labeler == "auto" and has_vllm
                             and vllm_launcher.local_gpu_available()):
        return LabelerChoice("vlm", f"launching vllm serve {config.vlm.model} locally", launch=True)
    if config.labeler == "vlm":
        raise ConfigError(
            "--labeler vlm needs a VLM: pass --vlm.base-url http://HOST:PORT/v1 (or set "
            f"{VLM_BASE_URL_ENV}) for a running OpenAI-compatible server such as `vllm serve`, or "
            "--vlm.launch on a machine with a GPU and `pip install \"plare-jax[vlm]\"`")
    return LabelerChoice(
        "scripted",
        "no VLM endpoint configured and no local GPU with vLLM: labels come from the simulator's "
        f"reward (scripted teacher). For VLM labels pass --vlm.base-url (or set {VLM_BASE_URL_ENV}) "
        "or run with --vlm.launch on a GPU machine")


def vlm_config(config: SharedOptions, base_url: str) -> VLMConfig:
    return VLMConfig(
        base_url=base_url, model=config.vlm.model, api_key_env=config.vlm.api_key_env,
        concurrency=config.vlm.concurrency, timeout_s=config.vlm.timeout_s,
        max_retries=config.vlm.max_retries, num_keyframes=config.num_keyframes,
        max_tokens=config.vlm.max_tokens, both_orders=config.vlm.both_orders,
    )


def teacher_scores(config, pairs: SegmentPairs) -> np.ndarray:
    """[P, 2] ground-truth score per segment that the scripted teacher compares."""
    return pairs.progress if config.teacher == "progress" else pairs.returns


def teacher_step_scores(dataset, pairs: SegmentPairs) -> np.ndarray | None:
    """[P, 2, T] per-step dense rewards of each segment (what the myopic teacher discounts), or
    None when the dataset has no rewards."""
    if getattr(dataset, "rewards", None) is None:
        return None
    rows = pairs.starts[..., None] + np.arange(pairs.length)
    return np.asarray(dataset.rewards, np.float64)[rows]


def teacher_is_noise_free(config: SharedOptions) -> bool:
    """Whether the scripted teacher's labels are its own noise-free ones under these options."""
    if config.teacher_agreement is not None:
        return config.teacher_agreement == 1.0
    return config.teacher_noise_level is None or config.teacher_noise_level == noise_free_level(config.teacher_noise)


def scripted_teacher(config: SharedOptions, scores: np.ndarray, step_scores: np.ndarray | None, *,
                     data_seed: int) -> ScriptedTeacher:
    """The scripted teacher of --teacher-noise with its knob: --teacher-noise-level as given, or the
    level calibrated on these pairs to reach --teacher-agreement with the noise-free teacher."""
    model = config.teacher_noise
    if config.teacher_agreement is not None and config.teacher_agreement < 1.0:
        try:
            level = calibrate_noise(model, scores, config.teacher_agreement, seed=data_seed,
                                    step_scores=step_scores, equal_threshold=config.teacher_equal_threshold)
        except ValueError as e:
            raise ConfigError(f"--teacher-noise {model} --teacher-agreement {config.teacher_agreement}: {e}") from None
    elif config.teacher_noise_level is not None:
        level = config.teacher_noise_level
    else:
        level = noise_free_level(model)
    return ScriptedTeacher(equal_threshold=config.teacher_equal_threshold,
                           noise=TeacherNoise(model, level), seed=data_seed)


PairImages = Callable[[SegmentPairs], list]
"""The images the VLM sees of some pairs: `pair_images(pairs) -> [(first, second) uint8 HxWx3]`
(a data source's: MetaWorld renders them from the stored simulator states, recorded data tiles
its stored frames)."""


def label_pairs(config: SharedOptions, choice: LabelerChoice, goal_text: str, dataset, pairs: SegmentPairs,
                base_url: str | None, label_store_path, *, data_seed: int, pair_images: PairImages | None = None,
                should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, dict]:
    """Preferences [P] in {0, 1, -1} from the chosen labeler, plus its statistics.

    Scripted: the teacher of --teacher-noise on the dataset's rewards. VLM: `pair_images` of each
    chunk of 512 pairs, labelled into the content-addressed store at `label_store_path`, with
    `should_stop` checked between making the images and labelling them.
    """
    if choice.kind == "scripted":
        scores = teacher_scores(config, pairs)
        step_scores = teacher_step_scores(dataset, pairs) if config.teacher_noise == "myopic" else None
        teacher = scripted_teacher(config, scores, step_scores, data_seed=data_seed)
        result = teacher.label(PairBatch(goal_text, scores=scores, step_scores=step_scores), progress=False)
        return result.preferences, result.stats
    if pair_images is None:
        raise ValueError("label_pairs: a VLM labels images, so it needs the data source's pair_images")
    preferences, stats_list = [], []
    chunk = 512  # images then labels in chunks: bounded memory, and labels are stored as they come
    with LabelStore(label_store_path) as store:
        labeler = VLMLabeler(vlm_config(config, base_url), store=store)
        for begin in range(0, pairs.num_pairs, chunk):
            raise_if_stopped(should_stop)
            images = pair_images(pairs.take(np.arange(begin, min(begin + chunk, pairs.num_pairs))))
            raise_if_stopped(should_stop)
            png_pairs = [(encode_png(a), encode_png(b)) for a, b in images]
            result = labeler.label(PairBatch(goal_text, images=png_pairs))
            preferences.append(result.preferences)
            stats_list.append(result.stats)
    return np.concatenate(preferences), merge_stats(stats_list)


_SUMMED_STATS = ("pairs", "queried_pairs", "cache_hits", "requests", "retries", "labelled", "unsure_answers",
                 "malformed", "failed", "unsure", "prompt_tokens", "completion_tokens", "wall_s",
                 "queries", "first_answers", "sure_answers", "order_compared", "order_agreements",
                 "order_disagreements", "reasoning_without_answer")
# Shares among the stats, as (numerator, denominator) counts: recomputed from the summed counts.
_RATIO_STATS = {"first_answer_share": ("first_answers", "sure_answers"),
                "order_consistency": ("order_agreements", "order_compared")}


def merge_stats(stats_list: list[dict]) -> dict:
    """One labeling report's statistics from per-chunk statistics.

    Counts and wall time add up and rates are recomputed from them; a latency percentile is the
    largest of the chunks' (an upper bound: chunks cannot be merged exactly); anything else
    (model, prompt version, concurrency) is the same in every chunk.
    """
    merged = dict(stats_list[0])
    for name in _SUMMED_STATS:
        if name in merged:
            merged[name] = sum(stats.get(name) or 0 for stats in stats_list)
    for name in merged:
        if name.startswith("latency_"):
            merged[name] = max(stats[name] for stats in stats_list)
    if "failure_reasons" in merged:
        reasons = collections.Counter()
        for stats in stats_list:
            reasons.update(stats.get("failure_reasons") or {})
        merged["failure_reasons"] = dict(reasons.most_common(5))
    for name, (numerator, denominator) in _RATIO_STATS.items():
        if name in merged:
            merged[name] = (merged.get(numerator) or 0) / merged[denominator] if merged.get(denominator) else None
    wall = merged.get("wall_s") or 0.0
    if wall > 0:
        merged["pairs_per_s"] = merged.get("queried_pairs", 0) / wall
        merged["requests_per_s"] = merged.get("requests", 0) / wall
    return merged


def label_statistics(preferences: np.ndarray, stats: dict) -> dict:
    """Counts and rates of a labeling run with no ground truth to compare against."""
    prefs = check_preferences(preferences)
    report = {"pairs": int(len(prefs)), "accuracy": None,
              "first": int((prefs == 0).sum()), "second": int((prefs == 1).sum()),
              "unsure": int((prefs == UNSURE).sum()),
              "unsure_rate": float((prefs == UNSURE).mean()) if len(prefs) else 0.0}
    for key in ("requests", "retries", "malformed", "failed", "cache_hits", "prompt_tokens",
                "completion_tokens", "latency_p50_s", "latency_p90_s", "latency_p99_s", "wall_s",
                "pairs_per_s", "requests_per_s"):
        report[key] = stats.get(key)
    return report


def label_report(config: SharedOptions, choice: LabelerChoice, preferences: np.ndarray, stats: dict,
                 scores: np.ndarray | None, *, where: str) -> dict:
    """The labels' report (printed, prefixed by `where`), for any data source.

    `scores`: the noise-free teacher's [P, 2] scores, when the data has ground truth: the report
    then gives the labels' accuracy against that teacher. Every report gives the share of "first"
    labels (a position-biased labeller shows up far from the teacher's share).

    Raises `LabelCoverageError` when more than --max-unlabeled-fraction of the pairs got no label:
    missing labels are weight 0, so "plare" would be little more than BC; it stops here, before
    any training, rather than report that (the error says what to do).
    """
    first_share = label_agreement(preferences, preferences)["first_share"]
    if scores is None:
        report = label_statistics(preferences, stats)
        report["first_share"] = first_share
        print(f"{where} labels ({choice.kind}): {report['pairs']} pairs, first {report['first']}, second "
              f"{report['second']}, unsure {report['unsure']} (no ground truth: accuracy not measurable)")
    else:
        teacher = ScriptedTeacher().label(PairBatch(where, scores=scores), progress=False)
        report = labeling_report(preferences, teacher.preferences, stats)
        report["first_share"] = first_share
        report["teacher_first_share"] = label_agreement(teacher.preferences, teacher.preferences)["first_share"]
        if choice.kind == "scripted":
            report.update({key: stats.get(key) for key in ("noise_model", "flipped", "made_unsure")})
            level = stats.get("noise_level")
            report["noise_level"] = level if level is None or np.isfinite(level) else None  # inf: noise-free boltzmann
        if choice.kind == "scripted" and teacher_is_noise_free(config):
            # The labels are the teacher's own: agreement with it is 1 by construction, not a finding.
            report["accuracy_note"] = "labels are the scripted teacher's own; accuracy is 1 by construction"
            print(f"{where} labels: scripted teacher ({config.teacher}), "
                  f"{report['pairs']} pairs, unsure rate {report['unsure_rate']:.1%}")
        else:
            print(f"{where} labels ({choice.kind}):\n{format_report(report)}")
    report["coverage"] = check_label_coverage(stats, max_unlabeled_fraction=config.max_unlabeled_fraction)
    return report
