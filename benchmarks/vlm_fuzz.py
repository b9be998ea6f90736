"""Fuzzing the VLM labeler: a loopback server answers a share of its requests with faults.

The server (plare_jax.testing.loopback_server, fuzz mode) draws each faulty request's
fault from: HTTP 5xx/429, dropped connections, random bytes, invalid UTF-8, truncated
JSON, huge bodies, empty choices, null content, wrong JSON types, bodies trickling past
the client's deadline, stalled bodies, Unicode digits and minus signs, lone surrogates,
the same answer twice and two different answers. The fake model's intended answer of
every pair is known (the brighter clip, -1 within the tie margin), so every label can
be checked. Figures: pairs, faults by kind, crashes (exceptions out of the labeler),
confident mismatches (a 0/1 label, or any label of a pair meant as -1, that differs from
the intent), and the pairs left failed / malformed after the first run and after one
re-run on the same label store (which asks only the missing pairs again).

    python benchmarks/vlm_fuzz.py                     # 600 pairs, 30% faults, ~10-20 s
    python benchmarks/vlm_fuzz.py --pairs 300 --fault-rate 0.3 --seed 1
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile
import traceback

import numpy as np
import tyro

from plare_jax.labeling.base import PAIR_STATUSES, UNSURE, PairBatch
from plare_jax.testing.loopback_server import (
    FAULT_KINDS,
    LoopbackBehavior,
    LoopbackVLMServer,
    brightness_png,
    intended_choice,
)
from plare_jax.labeling.store import LabelStore
from plare_jax.labeling.vlm import VLMConfig, VLMLabeler

TASK = "open the drawer"


@dataclasses.dataclass(frozen=True)
class FuzzConfig:
    """Drive the VLM labeler against a faulty loopback server and check every label."""

    pairs: int = 600
    """Distinct image pairs to label."""
    fault_rate: float = 0.3
    """Share of requests (by content and try) the server answers with a fault."""
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    """Faults to draw from (default: all)."""
    seed: int = 0
    """Changes which requests get which fault."""
    concurrency: int = 32
    """Pairs in flight at once."""
    max_retries: int = 3
    """Client retries per request (and re-asks of a malformed answer)."""
    timeout_s: float = 1.0
    """Client deadline per request; trickling and stalled bodies outlast it."""
    trickle_s: float = 2.0
    """How long a trickling body takes to arrive (longer than timeout_s: only a whole-answer deadline stops it)."""
    out: pathlib.Path | None = None
    """Write the figures as JSON here (default: print only)."""


def make_pairs(n: int, seed: int = 0, tie_share: float = 0.25) -> tuple[list[tuple[bytes, bytes]], np.ndarray]:
    """n distinct image pairs of known brightness, about `tie_share` of them near-equal (meant
    as -1), and the brightness levels [n, 2]."""
    rng = np.random.default_rng(seed)
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < n:
        a = int(rng.integers(0, 256))
        b = int(np.clip(a + rng.integers(-3, 4), 0, 255)) if rng.random() < tie_share else int(rng.integers(0, 256))
        chosen[(a, b)] = None
    levels = np.array(list(chosen), dtype=np.float64) / 255.0
    return [(brightness_png(a), brightness_png(b)) for a, b in levels], levels


def intended_labels(levels: np.ndarray, tie_margin: float) -> np.ndarray:
    """The fake model's intended label per pair (its stage 1 states brightness with 4 decimals)."""
    return np.array([int(intended_choice([float(f"{a:.4f}"), float(f"{b:.4f}")], tie_margin)) for a, b in levels])


def confident_mismatches(preferences: np.ndarray, intent: np.ndarray) -> int:
    """Labels that claim something the server did not mean: any label of a pair meant as -1
    other than -1, and any 0/1 label that differs from the intent. A -1 for lack of an answer is no claim."""
    claimed = preferences != UNSURE
    return int((claimed & (preferences != intent)).sum())


def run_fuzz(cfg: FuzzConfig) -> dict:
    images, levels = make_pairs(cfg.pairs, cfg.seed)
    behavior = LoopbackBehavior(fault_rate=cfg.fault_rate, fault_kinds=cfg.fault_kinds, fault_seed=cfg.seed,
                                hang_s=30.0, trickle_s=cfg.trickle_s)  # fmt: skip
    intent = intended_labels(levels, behavior.tie_margin)
    batch = PairBatch(TASK, images=images)
    figures: dict = {"pairs": cfg.pairs, "fault_rate": cfg.fault_rate, "seed": cfg.seed, "crashes": 0, "runs": []}
    with tempfile.TemporaryDirectory() as tmp, LoopbackVLMServer(behavior=behavior) as server:
        with LabelStore(pathlib.Path(tmp) / "labels.sqlite") as store:
            for run_name in ("first run", "re-run on the same store"):
                config = VLMConfig(base_url=server.base_url, model=server.model, concurrency=cfg.concurrency,
                                   max_retries=cfg.max_retries, timeout_s=cfg.timeout_s, retry_backoff_s=0.01,
                                   seed=cfg.seed)  # fmt: skip
                try:
                    result = VLMLabeler(config, store=store).label(batch, progress=False)
                except Exception:  # what the fuzz hunts: any exception out of the labeler
                    figures["crashes"] += 1
                    figures.setdefault("tracebacks", []).append(traceback.format_exc())
                    continue
                prefs = result.preferences
                figures["runs"].append({
                    "run": run_name,
                    "statuses": {name: int((result.status == name).sum()) for name in PAIR_STATUSES},
                    "confident_mismatches": confident_mismatches(prefs, intent),
                    "labels_matching_intent": int((prefs == intent).sum()),
                    "requests": result.stats["requests"],
                    "retries": result.stats["retries"],
                    "cache_hits": result.stats["cache_hits"],
                    "wall_s": round(result.stats["wall_s"], 2),
                })  # fmt: skip
            figures["stored_labels"] = len(store)
        figures["faults_by_kind"] = dict(sorted(server.faults.items()))
        figures["faults"] = sum(server.faults.values())
        figures["server_requests"] = server.counts["requests"]
        # A trickle outlasts the client's deadline: none may have been read to its end.
        figures["trickles_read_to_the_end"] = server.counts.get("trickle_completed", 0)
    figures["intended"] = {str(c): int((intent == c).sum()) for c in (0, 1, -1)}
    return figures


def main(cfg: FuzzConfig) -> dict:
    figures = run_fuzz(cfg)
    print(json.dumps(figures, indent=2))
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(figures, indent=2))
    return figures


def parse_args(argv: list[str] | None = None) -> FuzzConfig:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(FuzzConfig, args=argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main(parse_args())
