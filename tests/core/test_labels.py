import pytest

from pneumoscan.core.labels import Task, class_index, parse_filename


@pytest.mark.parametrize(
    ("name", "folder", "subtype", "patient"),
    [
        ("person12_bacteria_47.jpeg", "PNEUMONIA", "bacteria", "person12"),
        ("person1_virus_6.jpeg", "PNEUMONIA", "virus", "person1"),
        ("IM-0115-0001.jpeg", "NORMAL", "normal", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL", "normal", "NORMAL2-IM-1427"),
    ],
)
def test_kermany_names_give_subtype_and_patient(name, folder, subtype, patient):
    info = parse_filename(name, folder)
    assert (info.subtype, info.patient, info.recognised) == (subtype, patient, True)


def test_unrecognised_pneumonia_name_has_no_subtype():
    info = parse_filename("scan_0042.png", "PNEUMONIA")
    assert info.subtype is None and not info.recognised
    assert info.patient == "scan_0042"
    assert class_index(Task.THREE_CLASS, "PNEUMONIA", info.subtype) is None
    assert class_index(Task.BINARY, "PNEUMONIA", info.subtype) == 1


def test_class_indices_follow_class_names():
    assert Task.THREE_CLASS.class_names == ("normal", "bacteria", "virus")
    assert class_index(Task.THREE_CLASS, "PNEUMONIA", "virus") == 2
    assert class_index(Task.BINARY, "NORMAL", "normal") == 0
