"""Pure JAX losses for Contrastive Preference Learning (CPL), behaviour cloning, and the
baselines' reward model (Bradley-Terry) and offline RL (IQL).

This module imports nothing of the package and no flax, so it can be lifted into any
JAX project. Every loss is per example (unreduced); reduce with `weighted_mean`, which
is safe when every weight is zero (PLARE gives "unsure" VLM answers weight 0).

References:
  Hejna et al., "Contrastive Preference Learning: Learning from Human Feedback
  without RL", arXiv 2310.13639 (CPL).
  Luu et al., "Policy Learning from Large Vision-Language Model Feedback without
  Reward Modeling", arXiv 2507.23391 (PLARE).
  Kostrikov et al., "Offline Reinforcement Learning with Implicit Q-Learning",
  arXiv 2110.06169 (IQL: expectile value loss, advantage-weighted extraction).
  Wang et al., "RL-VLM-F: Reinforcement Learning from Vision Language Foundation
  Model Feedback", arXiv 2402.03681 (a Bradley-Terry reward model on VLM labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "segment_scores",
    "cpl_loss",
    "noisy_label_targets",
    "check_noise_rates",
    "small_loss_weights",
    "cpl_rank_loss",
    "bc_loss",
    "weighted_mean",
    "preference_accuracy",
    "bradley_terry_loss",
    "expectile_loss",
    "awr_weights",
    "awr_policy_loss",
]

MaskLike = jax.typing.ArrayLike | Sequence[jax.typing.ArrayLike] | None


def _split_mask(mask: MaskLike, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Returns one boolean `[B, T]` mask per segment (all True when `mask` is None)."""
    if mask is None:
        full = jnp.ones(shape, dtype=bool)
        return full, full
    if isinstance(mask, (tuple, list)):
        if len(mask) != 2:
            raise ValueError(f"mask as a sequence must be a (mask_1, mask_2) pair, got {len(mask)} items")
        mask_1, mask_2 = (jnp.asarray(m) for m in mask)
    else:
        mask = jnp.asarray(mask)
        if mask.ndim == len(shape) + 1:  # [B, 2, T]
            if mask.shape[1] != 2:
                raise ValueError(f"a 3-D mask must be [B, 2, T], got shape {mask.shape}")
            mask_1, mask_2 = mask[:, 0], mask[:, 1]
        else:
            mask_1 = mask_2 = mask
    for name, m in (("mask_1", mask_1), ("mask_2", mask_2)):
        if m.shape != shape:
            raise ValueError(f"{name} has shape {m.shape}, expected {shape} like the log-probs")
    return mask_1.astype(bool), mask_2.astype(bool)


def segment_scores(
    logp: jax.typing.ArrayLike,
    *,
    alpha: float = 0.1,
    mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """CPL segment score (discounted-free sum of scaled log-likelihoods).

    A = alpha * sum_t mask_t * logp_t

    Args:
      logp: `[B, T]` per-step log pi(a_t | s_t).
      alpha: temperature of the implied optimal advantage.
      mask: optional `[B, T]` of valid steps (nonzero = valid). Masked steps are
        excluded with `where`, so a NaN/inf in a padded step cannot leak in.

    Returns:
      `[B]` segment scores.
    """
    logp = jnp.asarray(logp)
    if logp.ndim != 2:
        raise ValueError(f"logp must be [batch, time], got shape {logp.shape}")
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != logp.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {logp.shape}")
        logp = jnp.where(mask.astype(bool), logp, 0.0)
    return alpha * jnp.sum(logp, axis=-1)


def cpl_loss(
    logp_1: jax.typing.ArrayLike,
    logp_2: jax.typing.ArrayLike,
    label: jax.typing.ArrayLike,
    *,
    alpha: float = 0.1,
    bias: float = 0.5,
    mask: MaskLike = None,
    label_smoothing: float = 0.0,
    flip_rate: float = 0.0,
) -> jax.Array:
    """Biased Contrastive Preference Learning loss, per pair (unreduced).

    With segment scores A_i = alpha * sum_t mask_i,t * logp_i,t and label y, the
    probability that the SECOND segment is preferred:

      loss = y * softplus(-(A_2 - bias * A_1)) + (1 - y) * softplus(-(A_1 - bias * A_2))

    This is the CPL logistic loss with the conservative bias lambda (`bias`) of
    Hejna et al. (arXiv 2310.13639, Sec. 4); bias < 1 makes it strictly convex and
    keeps the policy close to the data. PLARE (arXiv 2507.23391) trains with
    alpha=0.1, bias=0.5 on VLM labels. `softplus` is evaluated as
    `logaddexp(x, 0)`, finite with finite gradients for scores of any magnitude.

    Args:
      logp_1: `[B, T]` per-step log pi(a_t|s_t) of the first segments.
      logp_2: `[B, T]` same for the second segments.
      label: `[B]` probability that segment 2 is preferred (0 = first better,
        1 = second better, 0.5 = tie; any value in [0, 1] works).
      alpha: score temperature.
      bias: lambda, the weight of the other segment's score (1 = unbiased CPL).
      mask: optional valid-step mask for ragged segments: one `[B, T]` array used
        for both segments, a `(mask_1, mask_2)` pair of `[B, T]` arrays, or one
        `[B, 2, T]` array (segment axis second, like the learner's data).
      label_smoothing: eps of the conservative (cDPO) form for labels that may be
        flipped: (1 - eps) * loss(y) + eps * loss(1 - y). It bounds the repulsion of
        the non-preferred segment; see `noisy_label_targets`.
      flip_rate: eps of the unbiased robust-DPO form (Chowdhury et al., ICML 2024):
        [(1 - eps) * loss(y) - eps * loss(1 - y)] / (1 - 2 eps), unbiased for the
        clean loss when eps is the true flip rate. Each pair's loss is unbounded
        below, so keep bias < 1 (or a BC term). At most one of the two may be set.

    Returns:
      `[B]` loss per pair.

    Example:
      >>> import jax.numpy as jnp
      >>> logp_1 = jnp.zeros((1, 4)); logp_2 = jnp.full((1, 4), -5.0)
      >>> # segment 1 is more likely under the policy and is preferred: low loss
      >>> print(cpl_loss(logp_1, logp_2, jnp.array([0.0]), alpha=1.0, bias=0.5).round(4))
      [0.]
      >>> print(cpl_loss(logp_1, logp_2, jnp.array([1.0]), alpha=1.0, bias=0.5).round(4))
      [20.]
    """
    logp_1 = jnp.asarray(logp_1)
    logp_2 = jnp.asarray(logp_2)
    label = jnp.asarray(label)
    if logp_1.shape != logp_2.shape or logp_1.ndim != 2:
        raise ValueError(
            f"logp_1 and logp_2 must both be [batch, time], got {logp_1.shape} and {logp_2.shape}"
        )
    if label.shape != logp_1.shape[:1]:
        raise ValueError(f"label must be [batch]={logp_1.shape[:1]}, got {label.shape}")
    mask_1, mask_2 = _split_mask(mask, logp_1.shape)
    score_1 = segment_scores(logp_1, alpha=alpha, mask=mask_1)
    score_2 = segment_scores(logp_2, alpha=alpha, mask=mask_2)
    label = noisy_label_targets(label.astype(score_1.dtype), label_smoothing=label_smoothing,
                                flip_rate=flip_rate)
    second_wins = jax.nn.softplus(-(score_2 - bias * score_1))
    first_wins = jax.nn.softplus(-(score_1 - bias * score_2))
    return label * second_wins + (1.0 - label) * first_wins


def check_noise_rates(*, label_smoothing: float = 0.0, flip_rate: float = 0.0) -> None:
    """Raises ValueError unless both rates are in [0, 0.5) and at most one is set (plain Python:
    no JAX backend is started, so configs can be checked before `jax.distributed` starts)."""
    for name, value in (("label_smoothing", label_smoothing), ("flip_rate", flip_rate)):
        if not 0.0 <= value < 0.5:
            raise ValueError(f"{name} must be in [0, 0.5), got {value}")
    if label_smoothing and flip_rate:
        raise ValueError("set at most one of label_smoothing and flip_rate (two corrections for one noise)")


def noisy_label_targets(
    label: jax.typing.ArrayLike,
    *,
    label_smoothing: float = 0.0,
    flip_rate: float = 0.0,
) -> jax.Array:
    """The target that turns a preference loss linear in its label into a noise-robust form.

    CPL's loss (and Bradley-Terry's) is `y * l_2 + (1 - y) * l_1`, linear in the label y,
    so mixing the loss of a label with the loss of its flip is the same loss at another
    target y':

      label smoothing (cDPO): (1 - eps) loss(y) + eps loss(1 - y)  ->  y' = (1 - eps) y + eps (1 - y)
      robust DPO (rDPO):  [(1 - eps) loss(y) - eps loss(1 - y)] / (1 - 2 eps)  ->  y' = (y - eps) / (1 - 2 eps)

    rDPO's target leaves [0, 1] (for y = 1 it is (1 - eps) / (1 - 2 eps) > 1): that is what
    makes it unbiased, and why its per-pair loss is unbounded below.

    Args:
      label: `[B]` probability that segment 2 is preferred.
      label_smoothing: cDPO's eps in [0, 0.5).
      flip_rate: rDPO's assumed flip rate in [0, 0.5).

    Returns:
      `[B]` targets y'.

    Example:
      >>> import jax.numpy as jnp
      >>> print(noisy_label_targets(jnp.array([0.0, 1.0]), label_smoothing=0.1))
      [0.1 0.9]
      >>> print(noisy_label_targets(jnp.array([0.0, 1.0]), flip_rate=0.25))
      [-0.5  1.5]
    """
    check_noise_rates(label_smoothing=label_smoothing, flip_rate=flip_rate)
    label = jnp.asarray(label)
    if label_smoothing:
        return (1.0 - label_smoothing) * label + label_smoothing * (1.0 - label)
    if flip_rate:
        return (label - flip_rate) / (1.0 - 2.0 * flip_rate)
    return label


def small_loss_weights(
    per_pair_loss: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike,
    *,
    drop_fraction: jax.typing.ArrayLike,
) -> jax.Array:
    """Weights with the highest-loss share of a batch's pairs set to 0 (small-loss selection).

    Pairs that a model cannot fit are the likeliest to carry a flipped label (the small-loss
    trick of co-teaching, and of RIME for reward models). Of the pairs with a non-zero weight,
    the `floor(drop_fraction * count)` with the largest loss get weight 0; the rest keep theirs.
    The ranking reads the loss under `stop_gradient`: selection is not differentiated.

    Args:
      per_pair_loss: `[B]` loss of each pair (e.g. `cpl_loss`).
      weights: `[B]` non-negative weights (0 = already dropped, never counted).
      drop_fraction: share in [0, 1) to drop; may be a traced scalar (e.g. 0 before a warm-up).

    Returns:
      `[B]` weights.

    Example:
      >>> import jax.numpy as jnp
      >>> print(small_loss_weights(jnp.array([0.1, 5.0, 0.3, 9.0]), jnp.array([1.0, 1.0, 1.0, 0.0]),
      ...                          drop_fraction=0.5))
      [1. 0. 1. 0.]
    """
    loss = jax.lax.stop_gradient(jnp.asarray(per_pair_loss))
    weights = jnp.asarray(weights, loss.dtype)
    if loss.ndim != 1 or weights.shape != loss.shape:
        raise ValueError(f"per_pair_loss and weights must both be [B], got {loss.shape} and {weights.shape}")
    counted = weights > 0
    # Rank 0 = the largest loss among counted pairs; uncounted pairs rank last.
    order = jnp.argsort(jnp.where(counted, -loss, jnp.inf))
    rank = jnp.zeros(loss.shape, jnp.int32).at[order].set(jnp.arange(loss.shape[0], dtype=jnp.int32))
    num_drop = jnp.floor(jnp.asarray(drop_fraction, loss.dtype) * jnp.sum(counted)).astype(jnp.int32)
    return jnp.where(rank < num_drop, 0.0, weights)


def cpl_rank_loss(
    scores: jax.typing.ArrayLike,
    preferred: jax.typing.ArrayLike,
    *,
    bias: float = 0.5,
) -> jax.Array:
    """CPL ranking variant: each preferred segment against the rest of the batch.

    For a batch of `N` segment scores, row `i`'s positive is segment `preferred[i]`,
    every other segment in the batch is a negative (scaled by `bias`):

      loss_i = -log( exp(A_p) / (exp(A_p) + sum_{j != p} exp(bias * A_j)) )

    This is the contrastive form of CPL (Hejna et al., arXiv 2310.13639, Eq. 5)
    with several negatives; with two segments per row it equals `cpl_loss` for
    hard labels.

    Args:
      scores: `[B, N]` segment scores (e.g. from `segment_scores`) of the N
        candidates of each row.
      preferred: `[B]` integer index of the preferred candidate.
      bias: lambda applied to the negatives' scores.

    Returns:
      `[B]` loss per row.

    Example:
      >>> import jax.numpy as jnp
      >>> scores = jnp.array([[0.0, -1.0]])  # candidate 0 preferred
      >>> print(cpl_rank_loss(scores, jnp.array([0]), bias=0.5).round(4))
      [0.4741]
      >>> # same as the pairwise loss: softplus(-(0 - 0.5 * -1)) = softplus(-0.5)
      >>> print(cpl_loss(jnp.zeros((1, 1)), -jnp.ones((1, 1)), jnp.array([0.0]), alpha=1.0).round(4))
      [0.4741]
    """
    scores = jnp.asarray(scores)
    preferred = jnp.asarray(preferred)
    if scores.ndim != 2 or preferred.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [B, N] and preferred [B]; got {scores.shape} and {preferred.shape}"
        )
    is_positive = jnp.arange(scores.shape[1])[None, :] == preferred[:, None]
    logits = jnp.where(is_positive, scores, bias * scores)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), preferred[:, None], axis=-1)[:, 0]


def bc_loss(
    logp: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Behaviour-cloning negative log-likelihood, per row.

    For the deterministic actor, log pi(a|s) = -||mu(s) - a||^2, so this is the
    squared error summed over action dimensions (MSE times act_dim).

    Args:
      logp: `[B]` per-row log pi(a|s), or `[B, T]` per-step (then averaged over the
        valid steps of each row).
      mask: optional `[B, T]` valid steps (only with 2-D `logp`). A row with no valid
        step has loss 0 (and zero gradient), not NaN.

    Returns:
      `[B]` loss per row.

    Example:
      >>> import jax.numpy as jnp
      >>> print(bc_loss(jnp.array([[-1.0, -3.0, -100.0]]), mask=jnp.array([[1, 1, 0]])))
      [2.]
    """
    logp = jnp.asarray(logp)
    if logp.ndim == 1:
        if mask is not None:
            raise ValueError("mask is only meaningful for [batch, time] logp")
        return -logp
    if logp.ndim != 2:
        raise ValueError(f"logp must be [batch] or [batch, time], got shape {logp.shape}")
    if mask is None:
        return -jnp.mean(logp, axis=-1)
    mask = jnp.asarray(mask)
    if mask.shape != logp.shape:
        raise ValueError(f"mask has shape {mask.shape}, expected {logp.shape}")
    return weighted_mean(-logp, mask.astype(logp.dtype), axis=-1)


def weighted_mean(
    values: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike | None = None,
    *,
    axis: int | tuple[int, ...] | None = None,
) -> jax.Array:
    """NaN-safe weighted mean: sum(w * v) / sum(w), and 0 where all weights are 0.

    Values whose weight is 0 are excluded with `where`, so a NaN/inf there does not
    propagate, and the gradient is finite (zero) when every weight is 0.

    Args:
      values: array of any shape.
      weights: non-negative weights broadcastable to `values`; None means all 1.
      axis: axis or axes to reduce (None = all).

    Returns:
      The weighted mean, with `axis` reduced.

    Example:
      >>> import jax.numpy as jnp
      >>> print(weighted_mean(jnp.array([1.0, 3.0, jnp.nan]), jnp.array([1.0, 1.0, 0.0])))
      2.0
      >>> print(weighted_mean(jnp.array([1.0, 3.0]), jnp.zeros(2)))
      0.0
    """
    values = jnp.asarray(values)
    if weights is None:
        return jnp.mean(values, axis=axis)
    weights = jnp.broadcast_to(jnp.asarray(weights, dtype=values.dtype), values.shape)
    keep = weights != 0
    total = jnp.sum(jnp.where(keep, weights * jnp.where(keep, values, 0.0), 0.0), axis=axis)
    norm = jnp.sum(weights, axis=axis)
    safe_norm = jnp.where(norm != 0, norm, 1.0)
    return jnp.where(norm != 0, total / safe_norm, 0.0)


def preference_accuracy(
    logp_1: jax.typing.ArrayLike,
    logp_2: jax.typing.ArrayLike,
    label: jax.typing.ArrayLike,
    *,
    mask: MaskLike = None,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Fraction of pairs whose higher-scoring segment is the preferred one (a metric).

    Computed under `stop_gradient`. Ties (label 0.5) and pairs with weight 0 are
    excluded; with no eligible pair the result is 0. The comparison is on the
    unbiased scores (A_2 > A_1), whose sign does not depend on alpha > 0.

    Args:
      logp_1: `[B, T]` per-step log-probs of the first segments.
      logp_2: `[B, T]` of the second segments.
      label: `[B]` probability that segment 2 is preferred.
      mask: optional valid-step mask, as in `cpl_loss`.
      weights: optional `[B]` per-pair weights (0 = excluded).

    Returns:
      Scalar accuracy in [0, 1].

    Example:
      >>> import jax.numpy as jnp
      >>> lp1 = jnp.array([[0.0], [0.0], [0.0]]); lp2 = jnp.array([[-1.0], [1.0], [1.0]])
      >>> print(preference_accuracy(lp1, lp2, jnp.array([0.0, 0.0, 0.5])))
      0.5
    """
    logp_1 = jax.lax.stop_gradient(jnp.asarray(logp_1))
    logp_2 = jax.lax.stop_gradient(jnp.asarray(logp_2))
    label = jnp.asarray(label)
    mask_1, mask_2 = _split_mask(mask, logp_1.shape)
    score_1 = segment_scores(logp_1, alpha=1.0, mask=mask_1)
    score_2 = segment_scores(logp_2, alpha=1.0, mask=mask_2)
    correct = ((score_2 > score_1) == (label > 0.5)).astype(score_1.dtype)
    eligible = (label != 0.5).astype(score_1.dtype)
    if weights is not None:
        eligible = eligible * (jnp.asarray(weights) != 0)
    return weighted_mean(correct, eligible)


def bradley_terry_loss(
    reward_1: jax.typing.ArrayLike,
    reward_2: jax.typing.ArrayLike,
    label: jax.typing.ArrayLike,
    *,
    mask: MaskLike = None,
) -> jax.Array:
    """Bradley-Terry preference loss on summed per-step rewards, per pair (unreduced).

    With segment returns R_i = sum_t mask_i,t * r_i,t and label y (probability that the
    SECOND segment is preferred), P(2 > 1) = sigmoid(R_2 - R_1) and

      loss = -y * log sigmoid(R_2 - R_1) - (1 - y) * log sigmoid(R_1 - R_2)

    the cross-entropy of a reward model against the labels (Christiano et al. 2017; the
    RL-VLM-F baseline trains its reward model this way on VLM labels). It is exactly the
    CPL loss with alpha 1 and bias 1 applied to rewards instead of log-likelihoods, and is
    computed by `cpl_loss` so both share one numerically stable implementation.

    Args:
      reward_1: `[B, T]` per-step rewards r(s_t, a_t) of the first segments.
      reward_2: `[B, T]` same for the second segments.
      label: `[B]` probability that segment 2 is preferred (0.5 = tie).
      mask: optional valid-step mask, in any form `cpl_loss` accepts.

    Returns:
      `[B]` loss per pair.

    Example:
      >>> import jax.numpy as jnp
      >>> r1 = jnp.zeros((1, 2)); r2 = jnp.ones((1, 2))  # R_2 - R_1 = 2
      >>> print(bradley_terry_loss(r1, r2, jnp.array([1.0])).round(4))  # -log sigmoid(2)
      [0.1269]
      >>> print(bradley_terry_loss(r1, r2, jnp.array([0.5])).round(4))  # a tie: both directions
      [1.1269]
    """
    return cpl_loss(reward_1, reward_2, label, alpha=1.0, bias=1.0, mask=mask)


def expectile_loss(diff: jax.typing.ArrayLike, *, expectile: float) -> jax.Array:
    """Asymmetric squared loss of expectile regression, elementwise (IQL's value loss).

      loss = |expectile - 1[diff < 0]| * diff^2

    With diff = Q(s, a) - V(s), minimising it makes V(s) the `expectile` expectile of Q
    over the data's actions (Kostrikov et al., arXiv 2110.06169, Eq. 5): 0.5 is the mean
    (plain regression), values towards 1 approach the maximum over in-data actions.

    Args:
      diff: `[...]` target minus prediction.
      expectile: tau in (0, 1).

    Returns:
      `[...]` loss per element.

    Example:
      >>> import jax.numpy as jnp
      >>> print(expectile_loss(jnp.array([2.0, -2.0]), expectile=0.7))
      [2.8 1.2]
    """
    if not 0.0 < expectile < 1.0:
        raise ValueError(f"expectile must be in (0, 1), got {expectile}")
    diff = jnp.asarray(diff)
    weight = jnp.where(diff < 0, 1.0 - expectile, expectile).astype(diff.dtype)
    return weight * jnp.square(diff)


def awr_weights(
    advantages: jax.typing.ArrayLike,
    *,
    inverse_temperature: float,
    max_weight: float = 100.0,
) -> jax.Array:
    """Advantage-weighted-regression weights exp(beta * A), clipped at `max_weight`.

      w = min(exp(inverse_temperature * A), max_weight)

    IQL extracts its policy with these weights (arXiv 2110.06169, Eq. 7; the clip at 100
    is its implementation's). The exponent is clipped before `exp`, so large advantages
    give `max_weight` rather than inf, and the gradient there is 0.

    Args:
      advantages: `[...]` A(s, a) = Q(s, a) - V(s).
      inverse_temperature: beta >= 0 (0 = plain behaviour cloning).
      max_weight: upper clip (> 0).

    Returns:
      `[...]` weights in (0, max_weight].

    Example:
      >>> import jax.numpy as jnp
      >>> print(awr_weights(jnp.array([0.0, 1.0, 10.0]), inverse_temperature=1.0).round(2))
      [  1.     2.72 100.  ]
    """
    if inverse_temperature < 0 or max_weight <= 0:
        raise ValueError(f"need inverse_temperature >= 0 and max_weight > 0, got {inverse_temperature}, {max_weight}")
    advantages = jnp.asarray(advantages)
    exponent = jnp.minimum(inverse_temperature * advantages, jnp.log(max_weight))
    return jnp.minimum(jnp.exp(exponent), max_weight)  # exp(log(100)) rounds above 100 in float32


def awr_policy_loss(
    logp: jax.typing.ArrayLike,
    advantages: jax.typing.ArrayLike,
    *,
    inverse_temperature: float,
    max_weight: float = 100.0,
) -> jax.Array:
    """Advantage-weighted regression loss of the policy, per row: -w(A) * log pi(a|s).

    The weights (`awr_weights`) are computed under `stop_gradient`: the advantages come
    from critics that this loss must not train. With the deterministic actor
    (log pi = -||mu(s) - a||^2) this is a weighted squared error towards the data's
    actions, weighted towards those with a high advantage.

    Args:
      logp: `[B]` log pi(a|s) of the data's actions.
      advantages: `[B]` A(s, a).
      inverse_temperature: beta (IQL reference: 3 for this task family).
      max_weight: clip of the weights.

    Returns:
      `[B]` loss per row.

    Example:
      >>> import jax.numpy as jnp
      >>> print(awr_policy_loss(jnp.array([-1.0, -1.0]), jnp.array([0.0, 1.0]), inverse_temperature=1.0).round(2))
      [1.   2.72]
    """
    logp = jnp.asarray(logp)
    advantages = jnp.asarray(advantages)
    if logp.shape != advantages.shape:
        raise ValueError(f"logp and advantages must have the same shape, got {logp.shape} and {advantages.shape}")
    weights = jax.lax.stop_gradient(
        awr_weights(advantages, inverse_temperature=inverse_temperature, max_weight=max_weight)
    )
    return -weights * logp
