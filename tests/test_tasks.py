import pytest

from plare_jax.envs.tasks import ALL_TASKS, UnknownTaskError, resolve_task


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
