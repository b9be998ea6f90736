import os
import signal

import pytest

from plare_jax.interrupts import StopFlag, StopRequested, exit_code_for, raise_if_stopped, stop_on_signals


def test_first_signal_sets_the_flag_and_raises_nothing():
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        assert not stop()
        stop.check()  # nothing requested: returns
        os.kill(os.getpid(), signal.SIGINT)  # delivered before kill() returns to Python code
        assert stop() and stop.signum == signal.SIGINT
        with pytest.raises(StopRequested) as raised:
            stop.check()
    assert raised.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


def test_sigterm_has_its_own_exit_code_and_a_second_signal_stops_at_once():
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(StopRequested) as raised:
            os.kill(os.getpid(), signal.SIGINT)  # second signal: raised from the handler itself
        assert raised.value.signum == signal.SIGINT
        with pytest.raises(StopRequested) as first:
            stop.check()
    assert first.value.exit_code == 143 == exit_code_for(signal.SIGTERM)


def test_handlers_are_restored_when_the_block_raises():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError):
        with stop_on_signals():
            assert signal.getsignal(signal.SIGTERM) is not before
            raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGTERM) is before


def test_raise_if_stopped_uses_the_flags_signal():
    raise_if_stopped(None)
    raise_if_stopped(lambda: False)
    flag = StopFlag()
    flag.request(signal.SIGTERM)
    with pytest.raises(StopRequested) as raised:
        raise_if_stopped(flag)
    assert raised.value.exit_code == 143
    with pytest.raises(StopRequested) as plain:
        raise_if_stopped(lambda: True)
    assert plain.value.exit_code == 130
