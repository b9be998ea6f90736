"""Fuzzing the VLM labeler: 300+ pairs against a loopback server that answers 30% of requests with a fault.

Done when (issue 9): the run completes with 0 crashes and 0 confident labels that disagree with
the server's intended answer, whatever mix of broken bodies and odd answers it gets.
"""

import pytest

from benchmarks.vlm_fuzz import FuzzConfig, confident_mismatches, run_fuzz
from plare_jax.testing.loopback_server import FAULT_KINDS


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_fuzz_300_pairs_30_percent_faults_no_crash_no_wrong_label(seed):
    figures = run_fuzz(FuzzConfig(pairs=300, fault_rate=0.3, seed=seed))
    assert figures["crashes"] == 0, figures.get("tracebacks")
    first, rerun = figures["runs"]
    assert first["confident_mismatches"] == 0 and rerun["confident_mismatches"] == 0
    # every fault kind was sent, at about the asked rate
    assert set(figures["faults_by_kind"]) == set(FAULT_KINDS)
    assert 0.2 < figures["faults"] / figures["server_requests"] < 0.4
    assert figures["intended"]["-1"] > 30  # enough pairs meant as unsure to catch "−1" read as 1
    # retries absorb almost all faults; a re-run asks only the missing pairs
    missing = first["statuses"]["failed"] + first["statuses"]["malformed"]
    assert missing <= 0.05 * 300
    assert rerun["cache_hits"] == 300 - missing
    labelled = rerun["statuses"]["ok"] + rerun["statuses"]["unsure"]
    assert labelled >= 300 - 3 and rerun["labels_matching_intent"] == labelled
    assert figures["stored_labels"] == labelled
    # bodies trickling past the deadline were cut by the client, not sat through
    assert figures["trickles_read_to_the_end"] == 0


def test_confident_mismatch_counts_claims_only():
    import numpy as np

    intent = np.array([0, 1, -1, -1, 1])
    assert confident_mismatches(np.array([0, 1, -1, -1, -1]), intent) == 0  # -1 for no answer is no claim
    assert confident_mismatches(np.array([1, 1, 1, -1, 0]), intent) == 3  # wrong side, unsure read as 1, flipped
