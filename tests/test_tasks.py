import logging

import pytest

from plare_jax.envs.tasks import ALL_TASKS, UnknownTaskError, resolve_task, task_text


def test_short_and_full_names_resolve_to_v3_ids():
    assert resolve_task("sweep-into") == "sweep-into-v3"
    assert resolve_task("sweep-into-v3") == "sweep-into-v3"
    assert resolve_task(" Drawer_Open ") == "drawer-open-v3"


def test_every_v3_task_is_accepted():
    assert len(ALL_TASKS) == 50
    for name in ALL_TASKS:
        assert resolve_task(name) == name + "-v3"
        assert resolve_task(name + "-v3") == name + "-v3"


def test_unknown_name_lists_closest_valid_names():
    with pytest.raises(UnknownTaskError) as err:
        resolve_task("sweep-intoo")
    message = str(err.value)
    assert "sweep-intoo" in message and "sweep-into" in message
    assert isinstance(err.value, ValueError)


def test_unknown_name_without_close_match_lists_all():
    with pytest.raises(UnknownTaskError, match="valid names: assembly"):
        resolve_task("zzzzzzzz")


def test_task_text_builtin_override_and_generic(caplog):
    assert task_text("drawer-open-v3") == "open the drawer"
    assert task_text("sweep-into") == "place the green cube so that it lies on the square hole"
    assert task_text("plate-slide-v3") == "place the black plate so that it lies inside the goal"
    assert task_text("door-open-v3") == "open the door of the safe"
    assert task_text("door-open-v3", override="swing the door open") == "swing the door open"
    with caplog.at_level(logging.WARNING):
        generic = task_text("button-press-topdown-v3")
    assert "button press topdown" in generic
    assert "no built-in task text" in caplog.text
