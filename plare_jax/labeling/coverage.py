"""The label coverage gate: stop before training when too many pairs got no label.

Failed and malformed pairs come out of a labeler as -1, which PLARE drops (weight 0). If
most pairs are missing, CPL trains on almost nothing and the run quietly reports the
behaviour-cloning policy as PLARE; this gate turns that into a clear error instead.
"""

from __future__ import annotations

from plare_jax.labeling.base import PAIR_FAILED, PAIR_MALFORMED, LabelResult
from plare_jax.errors import PlareError

DEFAULT_MAX_UNLABELED_FRACTION = 0.1


class LabelCoverageError(PlareError, RuntimeError):
    """Too many pairs have no label (failed or malformed answers) to train on them."""

    def __init__(self, message: str, counts: dict):
        super().__init__(message)
        self.counts = counts


def label_coverage(result_or_stats: LabelResult | dict) -> dict:
    """Counts of pairs without a label: {"pairs", "failed", "malformed", "unlabeled", "unlabeled_fraction"}.

    Args:
        result_or_stats: A `LabelResult` (its per-pair status when it has one, else its stats),
            or a stats dict with "pairs" and, for labelers that can miss answers, "failed" / "malformed".
    """
    if isinstance(result_or_stats, LabelResult):
        if result_or_stats.status is not None:
            status = result_or_stats.status
            pairs = len(status)
            failed, malformed = int((status == PAIR_FAILED).sum()), int((status == PAIR_MALFORMED).sum())
        else:
            return label_coverage(result_or_stats.stats)
    else:
        pairs = int(result_or_stats.get("pairs") or 0)
        failed = int(result_or_stats.get("failed") or 0)
        malformed = int(result_or_stats.get("malformed") or 0)
    unlabeled = failed + malformed
    return {
        "pairs": pairs,
        "failed": failed,
        "malformed": malformed,
        "unlabeled": unlabeled,
        "unlabeled_fraction": unlabeled / pairs if pairs else 0.0,
    }


def _reasons(result_or_stats: LabelResult | dict) -> dict:
    stats = result_or_stats.stats if isinstance(result_or_stats, LabelResult) else result_or_stats
    reasons = stats.get("failure_reasons") or {}
    return dict(sorted(reasons.items(), key=lambda item: -item[1])[:3])


def check_label_coverage(result_or_stats: LabelResult | dict, *,
                         max_unlabeled_fraction: float = DEFAULT_MAX_UNLABELED_FRACTION,
                         option: str = "--max-unlabeled-fraction") -> dict:  # fmt: skip
    """Raises `LabelCoverageError` if more than `max_unlabeled_fraction` of the pairs have no label.

    Args:
        result_or_stats: See `label_coverage`.
        max_unlabeled_fraction: Largest accepted share of failed + malformed pairs, in [0, 1].
        option: Name of the setting to quote in the error (the caller's CLI option).

    Returns:
        `label_coverage`'s counts when the share is within the limit.
    """
    if not 0.0 <= max_unlabeled_fraction <= 1.0:
        raise ValueError(f"max_unlabeled_fraction must be in [0, 1], got {max_unlabeled_fraction}.")
    counts = label_coverage(result_or_stats)
    if counts["unlabeled_fraction"] > max_unlabeled_fraction:
        reasons = _reasons(result_or_stats)
        why = ("; most common failures: " + "; ".join(f"{n}x {reason}" for reason, n in reasons.items())) if reasons else ""
        raise LabelCoverageError(
            f"{counts['unlabeled']} of {counts['pairs']} pairs ({counts['unlabeled_fraction']:.1%}) got no label "
            f"from the VLM: {counts['failed']} failed (no answer after the retries), {counts['malformed']} malformed "
            f"(no readable 0 / 1 / -1){why}. At most {max_unlabeled_fraction:.0%} is accepted ({option}). Training now "
            "would drop them all and report a policy trained on too few pairs. Check the VLM server's log "
            "(overloaded, timing out, or rejecting requests), then run again: stored labels are reused and only "
            f"the missing pairs are asked. To train on fewer labels on purpose, raise {option}.",
            counts,
        )
    return counts
