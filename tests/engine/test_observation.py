import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from nlp_dlg.engine import (
    FORMAT,
    GradientFileError,
    GradientMismatchError,
    GradientObservation,
    NonFiniteGradientError,
    find_gradient_files,
    load_observation,
    save_observation,
)


def _obs(**extra):
    grads = {"layer.weight": torch.arange(6.0).reshape(2, 3), "layer.bias": torch.tensor([0.5, -1.5])}
    return GradientObservation({**grads, **extra}, {"task": "toy", "batch_size": 2})


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = save_observation(_obs(), tmp_path / "g.safetensors")
    back = load_observation(path)
    assert set(back.gradients) == {"layer.weight", "layer.bias"}
    assert torch.equal(back.gradients["layer.weight"], torch.arange(6.0).reshape(2, 3))
    assert back.metadata == {"task": "toy", "batch_size": 2}


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(GradientFileError, match="no such file"):
        load_observation(tmp_path / "nope.safetensors")


def test_random_bytes_are_not_safetensors(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(GradientFileError, match="not a safetensors file"):
        load_observation(path)


class _Bomb:
    def __reduce__(self):
        return (open, (str(_Bomb.target), "w"))


def test_pickle_is_refused_and_never_executed(tmp_path):
    _Bomb.target = tmp_path / "executed"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"w": _Bomb()}))
    with pytest.raises(GradientFileError, match="pickle"):
        load_observation(path)
    assert not _Bomb.target.exists()


def test_torch_save_archive_is_refused(tmp_path):
    path = tmp_path / "g.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(GradientFileError, match="never unpickled"):
        load_observation(path)


def test_nan_in_a_gradient_names_the_tensor(tmp_path):
    path = save_observation(_obs(**{"bad.weight": torch.tensor([1.0, float("nan")])}), tmp_path / "g.safetensors")
    with pytest.raises(NonFiniteGradientError, match="bad.weight"):
        load_observation(path)


def test_foreign_safetensors_without_toolkit_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(GradientFileError, match="not an nlp_dlg gradient file"):
        load_observation(path)


def test_truncated_header_is_not_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"a":1}')
    with pytest.raises(GradientFileError, match="bad header"):
        load_observation(path)


def test_check_shapes_names_expected_and_actual():
    with pytest.raises(GradientMismatchError, match=r"layer.weight: expected shape \(3, 2\), got \(2, 3\)"):
        _obs().check_shapes({"layer.weight": (3, 2), "layer.bias": (2,)})


def test_check_shapes_names_missing_and_extra():
    with pytest.raises(GradientMismatchError) as info:
        _obs().check_shapes({"layer.weight": (2, 3), "other.bias": (4,)})
    assert "missing parameter(s) other.bias" in str(info.value)
    assert "unexpected parameter(s) layer.bias" in str(info.value)


def test_find_gradient_files_sorted_and_empty_dir(tmp_path):
    for name in ("batch-001.safetensors", "batch-000.safetensors", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_gradient_files(tmp_path)] == ["batch-000.safetensors", "batch-001.safetensors"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GradientFileError, match="no \\*.safetensors"):
        find_gradient_files(empty)


def test_metadata_is_plain_json_in_the_header(tmp_path):
    path = save_observation(_obs(), tmp_path / "g.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"]["format"] == FORMAT
    assert json.loads(header["__metadata__"]["metadata"])["task"] == "toy"
