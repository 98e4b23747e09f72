import json
import warnings

import pytest

from nanoflow_compiler.search.errors import ProfileMismatchError, ProfileSchemaError, SearchWarning
from nanoflow_compiler.search.profile_db import DeviceKey, ProfileDB


def test_round_trip_is_plain_json(make_db, tmp_path):
    db = make_db(0)
    db.plans["m@1024"] = {"bucket": 1024}
    path = tmp_path / "p.json"
    db.save(path)
    data = json.loads(path.read_text())
    assert data["device"]["name"] == "Synthetic GPU" and data["schema"] == "nanoflow-profile-db"
    back = ProfileDB.load(path, expect=db.device)
    assert back.ops == db.ops and back.interference == db.interference and back.plans == db.plans


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(schema="other"), "not a nanoflow profile database"),
    (lambda d: d.update(version=99), "schema version 99"),
    (lambda d: d["ops"]["gemm"].append([64, 8, -1.0]), "bad measurement"),
    (lambda d: d["ops"]["gemm"].append([64, 12, 1e-5]), "not a multiple of 8"),
    (lambda d: d.pop("device"), "KeyError"),
])
def test_malformed_files_are_rejected(make_db, tmp_path, mutate, match):
    data = make_db(0).to_json()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileSchemaError, match=match):
        ProfileDB.load(path)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ProfileSchemaError, match="not valid JSON"):
        ProfileDB.load(path)
    with pytest.raises(FileNotFoundError, match="no profile database at"):
        ProfileDB.load(tmp_path / "missing.json")


def test_other_device_is_an_error_other_versions_warn(make_db, tmp_path):
    db = make_db(0)
    path = tmp_path / "p.json"
    db.save(path)
    with pytest.raises(ProfileMismatchError, match="measured on Synthetic GPU .48 SMs., not on this NVIDIA H100"):
        ProfileDB.load(path, expect=DeviceKey("NVIDIA H100", 132, "2.13.0", "3.6.0"))
    newer = DeviceKey("Synthetic GPU", 48, "2.14.0", "3.6.0")
    with pytest.warns(SearchWarning, match=r"torch 2.13.0 \(profile\) vs 2.14.0 \(here\)"):
        ProfileDB.load(path, expect=newer)
    with pytest.raises(ProfileMismatchError, match="other library versions"):
        ProfileDB.load(path, expect=newer, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ProfileDB.load(path, expect=db.device)


def test_interference_is_stored_both_ways_and_checked(make_db):
    db = ProfileDB(make_db(0).device)
    db.add_interference("a", 8, "b", 16, 1.2, 1.5)
    assert db.interference[("a", 8, "b", 16)] == 1.2 and db.interference[("b", 16, "a", 8)] == 1.5
    with pytest.raises(ValueError, match="exceed the device's 48"):
        db.add_interference("a", 40, "b", 16, 1.0, 1.0)
