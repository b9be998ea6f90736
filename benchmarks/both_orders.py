"""What asking each pair in both image orders buys against a position-biased labeller.

The real `VLMLabeler` labels the same image pairs against the loopback OpenAI-compatible
server (a real HTTP server on 127.0.0.1; only the model is faked), once per image order
setting: one order, (A, B), and both orders, (A, B) and (B, A), with a label kept only when
both name the same clip (`VLMConfig.both_orders`). The fake model prefers the brighter clip
("-1" within its tie margin), except that with `position_bias` p it answers "0" (the clip
shown first) for a share p of pairs and image orders, whatever they show. The truth of every
pair is what the faithful model means, so every label can be checked. Each row starts its
own server and a fresh label store (a temporary folder), so no answer comes from a cache.

Figures per bias and mode:
- accuracy: sure labels (0 / 1) that match the truth, among sure labels (a sure label of a
  pair whose truth is -1 is wrong);
- wrong share: wrong sure labels among all pairs; unsure share: -1 labels among all pairs;
- first-answer share: sure answers naming the clip shown first (0.5 with both orders for a
  model that reads the clips); order consistency: with both orders, pairs whose two sure
  answers name the same clip, among pairs with two sure answers;
- requests: chat-completion requests the client sent (two per query, a query per order).

    python benchmarks/both_orders.py                       # 400 pairs x 5 biases x 2 modes
    python benchmarks/both_orders.py --pairs 200 --position-biases 0 0.3
    python benchmarks/both_orders.py --tiny                # a handful of pairs (tests)

Bounded: `--pairs` is capped, the client's retries and deadline are bounded, and the whole
run stops at `--time-limit-s` (the rows done so far are written, the run exits non-zero).
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as `python benchmarks/both_orders.py`: make `benchmarks` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np
import tyro

from benchmarks.common import default_out, machine_info, markdown_table, write_json
from benchmarks.vlm_fuzz import intended_labels, make_pairs
from plare_jax.labeling.base import PAIR_FAILED, PAIR_MALFORMED, UNSURE, PairBatch
from plare_jax.testing.loopback_server import LoopbackBehavior, LoopbackVLMServer
from plare_jax.labeling.store import LabelStore
from plare_jax.labeling.vlm import VLMConfig, VLMLabeler

TASK = "open the drawer"
MAX_PAIRS = 20_000
MODES = (("one order", False), ("both orders", True))


@dataclasses.dataclass(frozen=True)
class BothOrdersBenchConfig:
    """Label accuracy, wrong and unsure shares with one image order and with both, against a position-biased model."""

    pairs: int = 400
    """Distinct image pairs labelled per bias and mode."""
    position_biases: tuple[float, ...] = (0.0, 0.1, 0.2, 0.35, 0.5)
    """Shares of answers the fake model gives as "0" (the clip shown first) whatever the images."""
    tie_share: float = 0.25
    """About this share of pairs are near-equal in brightness (truth -1)."""
    concurrency: int = 8
    """Pairs in flight at once (the client's VLMConfig.concurrency)."""
    timeout_s: float = 30.0
    """Client deadline per request."""
    max_retries: int = 2
    """Client retries per request (none are needed: the server injects no faults)."""
    time_limit_s: float = 900.0
    """Wall-clock budget of the whole run; rows not done by then are skipped and the run exits non-zero."""
    tiny: bool = False
    """Tiny sizes (24 pairs per row): a smoke run in seconds."""
    out: pathlib.Path | None = None
    """JSON output path (default benchmarks/out/both_orders.json)."""
    seed: int = 0
    """Seed of the image pairs (which pairs the bias hits follows from their images)."""

    def __post_init__(self):
        if not 1 <= self.pairs <= MAX_PAIRS:
            raise ValueError(f"pairs must be in [1, {MAX_PAIRS}], got {self.pairs}")
        if not self.position_biases or any(not 0.0 <= p <= 1.0 for p in self.position_biases):
            raise ValueError(f"position_biases must be a non-empty list of shares in [0, 1], got {self.position_biases}")
        if not 0.0 <= self.tie_share < 1.0:
            raise ValueError(f"tie_share must be in [0, 1), got {self.tie_share}")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0 or self.time_limit_s <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0, timeout_s and time_limit_s > 0")

    def effective(self) -> BothOrdersBenchConfig:
        """The configuration actually run (`--tiny` shrinks the sizes)."""
        if not self.tiny:
            return self
        return dataclasses.replace(self, pairs=min(self.pairs, 24), concurrency=min(self.concurrency, 4),
                                   time_limit_s=min(self.time_limit_s, 240.0))  # fmt: skip


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def label_row(cfg: BothOrdersBenchConfig, images, truth: np.ndarray, bias: float, both: bool, budget_s: float) -> dict:
    """Labels `images` once against a fresh loopback server and label store; the row's figures."""
    behavior = LoopbackBehavior(position_bias=bias)
    batch = PairBatch(TASK, images=images)
    with tempfile.TemporaryDirectory(prefix="both_orders_") as tmp, LoopbackVLMServer(behavior=behavior) as server:
        if not server.base_url.startswith("http://127.0.0.1:"):  # never anything but this machine's loopback
            raise RuntimeError(f"the loopback server is not on 127.0.0.1: {server.base_url}")
        config = VLMConfig(base_url=server.base_url, model=server.model, concurrency=cfg.concurrency,
                           timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, retry_backoff_s=0.01,
                           seed=cfg.seed, both_orders=both)  # fmt: skip
        with LabelStore(pathlib.Path(tmp) / "labels.sqlite") as store:
            labeler = VLMLabeler(config, store=store)
            # A hard deadline: on timeout the labeler's workers are cancelled and TimeoutError is raised.
            result = asyncio.run(asyncio.wait_for(labeler.alabel(batch, progress=False), timeout=budget_s))
            stored = len(store)
        counts = server.counts
    prefs, stats, n = result.preferences, result.stats, len(images)
    sure = prefs != UNSURE
    wrong = sure & (prefs != truth)
    decisive = sure & (truth != UNSURE)
    return {
        "position_bias": bias,
        "mode": "both orders" if both else "one order",
        "both_orders": both,
        "pairs": n,
        "sure": int(sure.sum()),
        "correct": int((sure & ~wrong).sum()),
        "wrong": int(wrong.sum()),
        "unsure": int((~sure).sum()),
        "accuracy": _share(int((sure & ~wrong).sum()), int(sure.sum())),
        # labeling_report's convention: only pairs sure in both the labels and the truth
        "accuracy_on_decisive": _share(int((decisive & (prefs == truth)).sum()), int(decisive.sum())),
        "wrong_share": wrong.sum() / n,
        "unsure_share": (~sure).sum() / n,
        "true_ties_share": float((truth == UNSURE).mean()),
        "failed": int((result.status == PAIR_FAILED).sum()),
        "malformed": int((result.status == PAIR_MALFORMED).sum()),
        "first_answers": stats["first_answers"],
        "sure_answers": stats["sure_answers"],
        "first_answer_share": stats["first_answer_share"],
        "order_compared": stats.get("order_compared"),
        "order_disagreements": stats.get("order_disagreements"),
        "order_consistency": stats.get("order_consistency"),
        "queries": stats["queries"],
        "requests": stats["requests"],
        "retries": stats["retries"],
        "cache_hits": stats["cache_hits"],
        "server_requests": counts["requests"],
        "server_position_biased_answers": counts.get("position_biased", 0),
        "stored_answers": stored,
        "wall_s": stats["wall_s"],
    }


def run(cfg: BothOrdersBenchConfig) -> dict:
    eff = cfg.effective()
    start = time.monotonic()
    images, levels = make_pairs(eff.pairs, eff.seed, tie_share=eff.tie_share)
    truth = intended_labels(levels, LoopbackBehavior().tie_margin)
    rows: list[dict] = []
    notes: list[str] = []
    stopped = False
    for bias in eff.position_biases:
        for _, both in MODES:
            left = eff.time_limit_s - (time.monotonic() - start)
            try:
                if left <= 0:
                    raise TimeoutError
                rows.append(label_row(eff, images, truth, bias, both, left))
            except TimeoutError:
                notes.append(f"stopped at the time limit ({eff.time_limit_s:g} s) in the row of bias {bias:g}, "
                             f"{'both orders' if both else 'one order'}: it and the later rows are not reported")  # fmt: skip
                stopped = True
                break
            print(f"bias {bias:g}, {rows[-1]['mode']}: done in {rows[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
        if stopped:
            break
    config = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(eff).items()}
    return {
        "benchmark": "both_orders",
        "config": config,
        "truth": {str(c): int((truth == c).sum()) for c in (0, 1, -1)},
        "machine": machine_info(extra_packages=("openai",)),
        "rows": rows,
        "notes": notes,
        "complete": not stopped,
        "wall_s": time.monotonic() - start,
    }


COLUMNS = [
    ("position_bias", "position bias"), ("mode", "mode"), ("accuracy", "accuracy (sure labels)"),
    ("wrong_share", "wrong share"), ("unsure_share", "unsure share"), ("first_answer_share", "first-answer share"),
    ("order_consistency", "order consistency"), ("requests", "requests"),
]  # fmt: skip


def main(cfg: BothOrdersBenchConfig) -> dict:
    payload = run(cfg)
    print(markdown_table(payload["rows"], COLUMNS) + "\n")
    truth = payload["truth"]
    print(f"{payload['config']['pairs']} pairs per row; truth: {truth['0']} first better, {truth['1']} second better, "
          f"{truth['-1']} ties (unsure share of a faithful model)")  # fmt: skip
    for note in payload["notes"]:
        print(f"note: {note}")
    path = write_json(cfg.out or default_out("both_orders"), payload)
    print(f"JSON: {path}")
    if not payload["complete"]:
        raise SystemExit(2)
    return payload


def parse_args(argv: list[str] | None = None) -> BothOrdersBenchConfig:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(BothOrdersBenchConfig, args=argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main(parse_args())
