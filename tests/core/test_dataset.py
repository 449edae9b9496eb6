import logging

import numpy as np
import pytest
from conftest import make_layout

from pneumoscan.core import dataset as ds
from pneumoscan.core.errors import DatasetError
from pneumoscan.core.labels import Task


def test_mendeley_layout_train_test_only(tmp_path):
    root = make_layout(tmp_path / "chest_xray", splits=("train", "test"))
    assert ds.available_splits(root) == ["train", "test"]
    pool = ds.training_pool(tmp_path)  # a parent holding chest_xray/ is accepted too
    assert len(pool) == 9 and {s.split for s in pool} == {"train"}
    _, targets = ds.targets_for(pool, Task.THREE_CLASS)
    assert sorted(targets.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_kaggle_layout_pool_never_includes_test(tmp_path):
    root = make_layout(tmp_path, splits=("train", "val", "test"))
    assert {s.split for s in ds.training_pool(root)} == {"train", "val"}
    assert {s.split for s in ds.scan_split(root, "test")} == {"test"}


def test_missing_and_empty_folders_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="data folder not found"):
        ds.scan_split(tmp_path / "nowhere", "train")
    root = make_layout(tmp_path / "d", splits=("train",))
    with pytest.raises(
        DatasetError, match=r"d/test: split folder not found \(splits found: train\)"
    ):
        ds.scan_split(root, "test")
    for image in (root / "train" / "NORMAL").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match=r"train/NORMAL: no images"):
        ds.scan_split(root, "train")


def test_three_class_warns_and_skips_unpatterned_names(tmp_path, caplog):
    root = make_layout(tmp_path, splits=("train",))
    odd = root / "train" / "PNEUMONIA" / "scan_0042.jpeg"
    odd.write_bytes((root / "train" / "PNEUMONIA" / "person0_bacteria_0.jpeg").read_bytes())
    samples = ds.scan_split(root, "train")
    binary, _ = ds.targets_for(samples, Task.BINARY)
    assert odd in [s.path for s in binary]
    with caplog.at_level(logging.WARNING):
        three, _ = ds.targets_for(samples, Task.THREE_CLASS)
    assert odd not in [s.path for s in three]
    assert "scan_0042.jpeg" in caplog.text and "no three-class label" in caplog.text


def test_real_split_keeps_patients_apart_and_stratifies(real_data):
    samples, targets = ds.targets_for(ds.training_pool(real_data), Task.THREE_CLASS)
    patients = [s.patient for s in samples]
    split = ds.split_by_patient(targets, patients, val_fraction=0.2, fold=0, seed=42)
    train_patients = {patients[i] for i in split.train}
    val_patients = {patients[i] for i in split.val}
    assert not train_patients & val_patients
    assert len(split.train) + len(split.val) == len(samples)
    overall = np.bincount(targets) / len(targets)
    in_val = np.bincount(targets[split.val]) / len(split.val)
    np.testing.assert_allclose(in_val, overall, atol=0.03)
    assert 0.17 < len(split.val) / len(samples) < 0.23
    again = ds.split_by_patient(targets, patients, val_fraction=0.2, fold=0, seed=42)
    np.testing.assert_array_equal(again.val, split.val)


def test_folds_partition_the_pool(real_data):
    samples, targets = ds.targets_for(ds.training_pool(real_data), Task.BINARY)
    patients = [s.patient for s in samples]
    vals = [ds.split_by_patient(targets, patients, 0.2, fold, seed=1).val for fold in range(5)]
    combined = np.sort(np.concatenate(vals))
    np.testing.assert_array_equal(combined, np.arange(len(samples)))


def test_patient_subset_keeps_whole_patients(real_data):
    samples, targets = ds.targets_for(ds.training_pool(real_data), Task.BINARY)
    patients = [s.patient for s in samples]
    chosen = ds.subset_patients(targets, patients, max_patients=50, seed=0)
    chosen_patients = {patients[i] for i in chosen}
    assert 40 <= len(chosen_patients) <= 60
    assert len(chosen) == sum(1 for p in patients if p in chosen_patients)
    assert set(targets[chosen].tolist()) == {0, 1}


def _synthetic_pool(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """600 patients with 1 to 6 films each, three classes in unequal shares; no files needed."""
    rng = np.random.default_rng(seed)
    targets, patients = [], []
    for patient in range(600):
        label = int(rng.choice(3, p=[0.3, 0.45, 0.25]))
        for _ in range(int(rng.integers(1, 7))):
            targets.append(label)
            patients.append(f"person{patient}")
    return np.asarray(targets), patients


def test_synthetic_split_keeps_patients_apart_and_stratifies():
    targets, patients = _synthetic_pool()
    split = ds.split_by_patient(targets, patients, val_fraction=0.2, fold=0, seed=42)
    train_patients = {patients[i] for i in split.train}
    val_patients = {patients[i] for i in split.val}
    assert not train_patients & val_patients
    assert len(split.train) + len(split.val) == len(targets)
    assert 0.15 < len(split.val) / len(targets) < 0.25
    np.testing.assert_allclose(
        np.bincount(targets[split.val]) / len(split.val),
        np.bincount(targets) / len(targets),
        atol=0.04,
    )
    again = ds.split_by_patient(targets, patients, val_fraction=0.2, fold=0, seed=42)
    np.testing.assert_array_equal(again.val, split.val)
    other_seed = ds.split_by_patient(targets, patients, val_fraction=0.2, fold=0, seed=7)
    assert not np.array_equal(other_seed.val, split.val)


def test_synthetic_folds_partition_patients():
    targets, patients = _synthetic_pool(1)
    vals = [ds.split_by_patient(targets, patients, 0.2, fold, seed=1).val for fold in range(5)]
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), np.arange(len(targets)))
    fold_patients = [{patients[i] for i in val} for val in vals]
    for first in range(5):
        for second in range(first + 1, 5):
            assert not fold_patients[first] & fold_patients[second]


def test_split_file_round_trips_paths_with_commas_and_quotes(tmp_path):
    """split.csv is written and read by one pair of functions through the csv module."""
    samples = [
        ds.Sample(tmp_path / "NORMAL" / 'a, "b".jpeg', "train", "NORMAL", "normal", "p1", True),
        ds.Sample(tmp_path / "PNEUMONIA" / "c.jpeg", "train", "PNEUMONIA", None, "p2", True),
        ds.Sample(tmp_path / "NORMAL" / "d.jpeg", "train", "NORMAL", "normal", "p3", True),
    ]
    ds.write_split(tmp_path / ds.SPLIT_FILE, samples, np.array([0, 1, 0]), ["val", "train", "val"])
    val, targets = ds.read_split(tmp_path, "val")
    assert [s.path for s in val] == [samples[0].path, samples[2].path]
    assert [s.patient for s in val] == ["p1", "p3"] and targets.tolist() == [0, 0]
    train, targets = ds.read_split(tmp_path, "train")
    assert [s.path for s in train] == [samples[1].path] and targets.tolist() == [1]
