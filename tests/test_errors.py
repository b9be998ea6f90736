"""One error type for users: every error the package raises for a user's input derives from
PlareError, and the command lines turn exactly that type into a message and exit code 2."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import plare_jax
from plare_jax.errors import USER_ERROR_EXIT_CODE, PlareError, exit_on_user_error

# Exceptions that are control flow or internal, never shown to a user as an error.
INTERNAL = {"StopRequested", "_RequestFailed", "_InvalidAnswer"}


def package_exception_classes():
    found = {}
    for info in pkgutil.walk_packages(plare_jax.__path__, "plare_jax."):
        if info.name.startswith("plare_jax.labeling.loopback") or info.name.startswith("plare_jax.testing"):
            continue  # the loopback server is test tooling
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__):
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_user_facing_error_is_a_plare_error():
    classes = package_exception_classes()
    assert "plare_jax.pipeline.config.ConfigError" in classes  # the walk found the package's errors
    not_user = [name for name, cls in classes.items()
                if cls.__name__ not in INTERNAL and not issubclass(cls, PlareError)]
    assert not not_user, f"derive these from plare_jax.errors.PlareError: {not_user}"


def test_user_errors_keep_their_builtin_types():
    # `except ValueError` in users' code keeps catching what it caught before.
    from plare_jax.data.importers._common import MissingExtraError
    from plare_jax.errors import OutputExistsError
    from plare_jax.pipeline.config import ConfigError

    assert issubclass(ConfigError, ValueError)
    assert issubclass(MissingExtraError, ImportError)
    assert issubclass(OutputExistsError, FileExistsError)


def test_exit_on_user_error_prints_the_message_and_exits_2(capsys):
    from plare_jax.labeling.coverage import LabelCoverageError

    def fails():
        raise LabelCoverageError("too many pairs unlabelled: re-run to ask them again", {})

    assert exit_on_user_error(fails) == USER_ERROR_EXIT_CODE == 2
    assert "error: too many pairs unlabelled: re-run to ask them again" in capsys.readouterr().err
    assert exit_on_user_error(lambda: None) == 0


def test_a_bug_keeps_its_traceback():
    def bug():
        raise KeyError("not a user error")

    with pytest.raises(KeyError):
        exit_on_user_error(bug)


@pytest.mark.parametrize("script", ["metaworld", "noise_robustness", "robust_search", "label_noise"])
def test_every_sweep_cli_reports_a_user_error_with_exit_2(script, capsys, tmp_path):
    # An unknown task is a PlareError raised inside the pipeline, before any work.
    from plare_jax.methods import METHODS

    registry = dict(METHODS)
    cli = importlib.import_module(f"experiments.{script}").cli
    assert cli(["--env", "no-such-task", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-task" in err
    # A failed sweep leaves the method registry (every CLI's --method choices) as it found it.
    assert METHODS == registry
