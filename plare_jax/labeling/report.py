"""A labeling report: how good and how fast the labels of a run were.

Accuracy is measured against the scripted teacher (ground-truth returns) on the
same pairs, on the pairs where both are sure; the full 3x3 confusion counts
(including unsure) show where the rest went. A VLM run also says how often the model
named the clip shown first (a position preference shows there, with or without ground
truth) and, when it asked both image orders, how often the two orders agreed.
"""

from __future__ import annotations


from plare_jax.labeling.base import UNSURE, VALID_LABELS, check_preferences

_NAMES = {0: "first", 1: "second", -1: "unsure"}
_STAT_KEYS = (
    "requests", "retries", "labelled", "unsure_answers", "malformed", "failed", "failure_reasons", "cache_hits",
    "prompt_tokens", "completion_tokens", "latency_p50_s", "latency_p90_s", "latency_p99_s", "wall_s",
    "pairs_per_s", "requests_per_s", "structured_output_mode",
    "both_orders", "queries", "first_answers", "sure_answers", "first_answer_share", "order_compared",
    "order_agreements", "order_disagreements", "order_consistency", "reasoning_without_answer",
)  # fmt: skip


def labeling_report(preferences, teacher_preferences, stats: dict) -> dict:
    """Compares a labeler's labels with the scripted teacher's and collects the run's stats.

    Args:
        preferences: `[P]` labels of the labeler under test, in {0, 1, -1}.
        teacher_preferences: `[P]` labels of the scripted teacher on the same pairs.
        stats: `LabelResult.stats` of the run (missing keys are reported as None).

    Returns:
        dict with pairs, accuracy (None if no pair is sure for both), both_sure,
        unsure_rate, teacher_unsure_rate, confusion[labeler][teacher] counts with keys
        "first"/"second"/"unsure", and the run's throughput, latency, token, cache,
        malformed and retry figures; for a VLM run also first_answer_share (share of its sure
        answers, over all queries, that named the clip shown first) and, with both orders,
        order_consistency (share of pairs with two sure answers whose answers agree) and
        order_disagreements (pairs made unsure by disagreeing).
    """
    prefs = check_preferences(preferences)
    teacher = check_preferences(teacher_preferences)
    if prefs.shape != teacher.shape:
        raise ValueError(f"preferences {prefs.shape} and teacher_preferences {teacher.shape} must label the same pairs.")
    both_sure = (prefs != UNSURE) & (teacher != UNSURE)
    n_sure = int(both_sure.sum())
    confusion = {
        _NAMES[a]: {_NAMES[b]: int(((prefs == a) & (teacher == b)).sum()) for b in VALID_LABELS} for a in VALID_LABELS
    }
    report = {
        "pairs": int(len(prefs)),
        "accuracy": float((prefs[both_sure] == teacher[both_sure]).mean()) if n_sure else None,
        "both_sure": n_sure,
        "unsure_rate": float((prefs == UNSURE).mean()) if len(prefs) else 0.0,
        "teacher_unsure_rate": float((teacher == UNSURE).mean()) if len(teacher) else 0.0,
        "confusion": confusion,
    }
    for key in _STAT_KEYS:
        report[key] = stats.get(key)
    return report


def format_report(report: dict) -> str:
    """Human-readable multi-line text of `labeling_report`'s output."""

    def num(value, fmt="{:.3f}"):
        return "n/a" if value is None else fmt.format(value)

    acc = report["accuracy"]
    lines = [
        f"pairs {report['pairs']}: accuracy vs scripted teacher {num(acc, '{:.1%}')} on {report['both_sure']} pairs "
        f"where both are sure; unsure rate {report['unsure_rate']:.1%} (teacher {report['teacher_unsure_rate']:.1%})",
        "confusion (rows: labeler, columns: teacher)   first  second  unsure",
    ]
    for row, counts in report["confusion"].items():
        lines.append(f"  {row:<43}{counts['first']:>6}{counts['second']:>8}{counts['unsure']:>8}")
    if report.get("requests") is None and report.get("cache_hits") is None:
        return "\n".join(lines)  # an instant labeler (scripted teacher): no traffic to report
    lines += [
        f"throughput: {num(report['pairs_per_s'], '{:.2f}')} pairs/s, {num(report['requests_per_s'], '{:.2f}')} requests/s, "
        f"wall {num(report['wall_s'], '{:.1f}')} s",
        f"latency per request: p50 {num(report['latency_p50_s'])} s, p90 {num(report['latency_p90_s'])} s, "
        f"p99 {num(report['latency_p99_s'])} s",
        f"tokens: prompt {report['prompt_tokens']}, completion {report['completion_tokens']}; cache hits "
        f"{report['cache_hits']}; requests {report['requests']}, retries {report['retries']}, "
        f"malformed {report['malformed']}, failed {report['failed']} (not stored: a re-run asks them again)",
    ]
    for reason, count in (report.get("failure_reasons") or {}).items():
        lines.append(f"  failed {count}x: {reason}")
    if report.get("sure_answers") is not None:
        lines.append(
            f"position: {num(report.get('first_answer_share'), '{:.1%}')} of {report['sure_answers']} sure answers "
            f"named the clip shown first" + (" (0.5: no preference for a position)" if report.get("both_orders") else "")
        )
    if report.get("both_orders"):
        lines.append(
            f"both image orders asked: they agree on {num(report.get('order_consistency'), '{:.1%}')} of "
            f"{report.get('order_compared')} pairs with two sure answers; {report.get('order_disagreements')} "
            "pairs made unsure by disagreeing"
        )
    if report.get("reasoning_without_answer"):
        lines.append(f"  {report['reasoning_without_answer']} replies were all reasoning, with no answer after it "
                     "(raise --vlm.max-tokens if they stopped at the limit)")  # fmt: skip
    return "\n".join(lines)
