"""The timeout of every subprocess a test starts.

These timeouts are hang guards, not speed checks: a test that starts a CLI or a benchmark must
fail if the child hangs, but never because a loaded machine ran it slowly (CI machines have 2
cores and may run the suite beside other jobs; one run under 4x oversubscription took 5x its
quiet time). So one generous bound serves them all.
"""

HANG_GUARD_S = 1800
