import dataclasses

import numpy as np
import pytest

from plare_jax.data.dataset import DatasetError, OfflineDataset, load_dataset, save_dataset


def make_dataset(lengths=(5, 3, 4), seed=0, task="sweep-into-v3") -> OfflineDataset:
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    return OfflineDataset(
        observations=rng.normal(size=(n, 39)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, 4)).astype(np.float32),
        rewards=rng.uniform(0, 10, size=n).astype(np.float32),
        successes=rng.random(n) < 0.3,
        episode_ids=np.repeat(np.arange(len(lengths), dtype=np.int32), lengths),
        sim_states=rng.normal(size=(n, 7)),
        episode_layouts=rng.normal(size=(len(lengths), 6)),
        card={"task": task, "num_steps": n},
    )


def test_episode_helpers():
    ds = make_dataset()
    np.testing.assert_array_equal(ds.episode_starts, [0, 5, 8])
    np.testing.assert_array_equal(ds.episode_lengths, [5, 3, 4])
    assert ds.num_episodes == 3 and ds.num_steps == 12
    for e, (s, n) in enumerate(zip(ds.episode_starts, ds.episode_lengths)):
        assert ds.episode_returns[e] == pytest.approx(ds.rewards[s : s + n].astype(np.float64).sum())
        assert ds.episode_success[e] == ds.successes[s : s + n].any()


def test_save_load_roundtrip(tmp_path):
    ds = make_dataset()
    save_dataset(ds, tmp_path / "d.npz")
    back = load_dataset(tmp_path / "d.npz", expect_task="sweep-into-v3")
    for field in dataclasses.fields(ds):
        a, b = getattr(ds, field.name), getattr(back, field.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


def test_flipped_bytes_are_a_dataset_error(tmp_path):
    path = tmp_path / "d.npz"
    save_dataset(make_dataset(), path)
    data = bytearray(path.read_bytes())
    # corrupt the middle of the observations payload (zip CRC catches it)
    data[400:420] = bytes(20)
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as raised:
        load_dataset(path)
    assert raised.value.path == path


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_one_dataset_error(tmp_path, keep):
    good = tmp_path / "good.npz"
    save_dataset(make_dataset(), good)
    data = good.read_bytes()
    path = tmp_path / "d.npz"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DatasetError, match="corrupt or truncated.*delete it and collect again") as raised:
        load_dataset(path)
    assert raised.value.path == path and "\n" not in str(raised.value)


def test_task_mismatch_and_missing_file(tmp_path):
    path = tmp_path / "d.npz"
    save_dataset(make_dataset(), path)
    with pytest.raises(DatasetError, match="expected 'door-open-v3'"):
        load_dataset(path, expect_task="door-open-v3")
    with pytest.raises(DatasetError, match="no dataset file"):
        load_dataset(tmp_path / "missing.npz")


def test_foreign_npz_is_a_dataset_error(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(DatasetError, match="lacks"):
        load_dataset(path)


def test_inconsistent_arrays_are_rejected():
    ds = make_dataset()
    with pytest.raises(DatasetError, match="rows"):
        dataclasses.replace(ds, rewards=ds.rewards[:-1])
    with pytest.raises(DatasetError, match="float32"):
        dataclasses.replace(ds, observations=ds.observations.astype(np.float64))
    bad_ids = ds.episode_ids.copy()
    bad_ids[6] = 2  # episode 1 interrupted by episode 2
    with pytest.raises(DatasetError, match="contiguously"):
        dataclasses.replace(ds, episode_ids=bad_ids)
