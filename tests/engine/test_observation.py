import json
import pickle
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from nlp_dlg.engine import (
    FORMAT,
    GradientFileError,
    GradientMismatchError,
    GradientObservation,
    NonFiniteGradientError,
    find_gradient_files,
    load_observation,
    read_metadata,
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
    with pytest.raises(GradientFileError, match="header length does not fit in the file"):
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


def _with_header_length(tmp_path, length: int):
    """A valid gradient file whose JSON header is padded with spaces to exactly ``length`` bytes (None when the
    header needs more)."""
    path = save_observation(_obs(), tmp_path / "g.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n].rstrip(b" ")
    if len(header) > length:
        return None
    path.write_bytes(struct.pack("<Q", length) + header + b" " * (length - len(header)) + raw[8 + n:])
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 4096).map(lambda k: 8 * (k // 8)) | st.sampled_from([128, 384, 640, 896, 1152, 4224]))
def test_a_valid_file_loads_whatever_its_header_length(tmp_path, length):
    """A header length of 128 mod 256 starts the file with 0x80, a pickle's first byte: still safetensors."""
    path = _with_header_length(tmp_path, length)
    if path is None:
        return
    obs = load_observation(path)
    assert obs.metadata["task"] == "toy" and read_metadata(path)["task"] == "toy"


def test_a_file_starting_with_0x80_that_is_safetensors_loads(tmp_path):
    path = _with_header_length(tmp_path, 384)
    assert path is not None and path.read_bytes()[:1] == b"\x80"
    assert load_observation(path).metadata["task"] == "toy"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_of_every_protocol_are_refused_as_pickles(tmp_path, protocol):
    path = tmp_path / "p.safetensors"
    path.write_bytes(pickle.dumps({"layer.weight": [1.0, 2.0], "note": "x" * 300}, protocol=protocol))
    with pytest.raises(GradientFileError, match="refused: this is a pickle"):
        load_observation(path)


def test_torch_save_zip_truncated_files_and_random_bytes_are_refused(tmp_path):
    import torch

    torch.save({"w": torch.ones(3)}, tmp_path / "t.safetensors")
    with pytest.raises(GradientFileError, match="zip or torch.save archive"):
        load_observation(tmp_path / "t.safetensors")
    raw = save_observation(_obs(), tmp_path / "g.safetensors").read_bytes()
    for cut in (0, 5, 9, 40, len(raw) - 1):
        (tmp_path / "cut.safetensors").write_bytes(raw[:cut])
        with pytest.raises(GradientFileError, match="not a safetensors file"):
            load_observation(tmp_path / "cut.safetensors")
    rng = np.random.default_rng(0)
    for _ in range(20):
        (tmp_path / "r.safetensors").write_bytes(rng.integers(0, 256, int(rng.integers(0, 400))).astype(np.uint8)
                                                 .tobytes())
        with pytest.raises(GradientFileError):
            load_observation(tmp_path / "r.safetensors")


def test_integer_gradient_tensors_are_refused_by_name(tmp_path):
    import torch

    obs = GradientObservation({"w": torch.ones(2, dtype=torch.int32)}, {"task": "toy"})
    save_observation(obs, tmp_path / "i.safetensors")
    with pytest.raises(GradientFileError, match=r"expected floating-point tensors, got w \(I32\)"):
        load_observation(tmp_path / "i.safetensors")
