"""dlib's face descriptor network read from its ``.dat`` file and run in torch, checked against dlib itself."""

import os

import dlib
import numpy as np
import pytest
import torch
from PIL import Image

from faceprompt.errors import BackendError, ModelFilesMissingError
from faceprompt.faces import FaceAnalyzer
from faceprompt.faces.backends.dlib_backend import DlibBackend, dlib_model_dir
from faceprompt.faces.backends.dlib_format import read_dlib_network
from faceprompt.faces.backends.dlib_resnet import (
    DlibTorchDescriptor,
    _add_zero_padded,
    load_dlib_resnet,
)
from faceprompt.faces.workers import share_cores_between_workers
from faceprompt.samples import sample_photos

DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"


@pytest.fixture(scope="module")
def model_path():
    return dlib_model_dir() / DESCRIPTOR_FILE


@pytest.fixture(scope="module")
def sample_faces():
    """(RGB photo, dlib full_object_detection) for every face the HOG detector finds in the sample photos."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_dir() / "shape_predictor_68_face_landmarks.dat"))
    faces = []
    for path in sample_photos().values():
        rgb = np.asarray(Image.open(path).convert("RGB"))
        faces += [(rgb, predictor(rgb, rect)) for rect in detector(rgb, 0)]
    return faces


@pytest.fixture(scope="module")
def dlib_reference():
    return dlib.face_recognition_model_v1(str(dlib_model_dir() / DESCRIPTOR_FILE))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_file_parses_into_the_resnet_layout(model_path):
    network = read_dlib_network(model_path)
    kinds = [layer.kind for layer in network.layers]
    assert network.input_size == (150, 150)
    assert network.input_means == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)  # dlib's RGB means
    assert kinds.count("con") == kinds.count("affine") == kinds.count("relu") == 29
    assert kinds.count("add_prev") == 14 and kinds.count("avg_pool") == 5 and kinds[-1] == "fc"
    convs = [layer for layer in network.layers if layer.kind == "con"]
    assert convs[0].params["weight"].shape == (32, 3, 7, 7)
    assert (convs[0].settings["stride_y"], convs[0].settings["padding_y"]) == (2, 0)
    assert [conv.settings["filters"] for conv in convs[1::2]] == [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4
    assert network.layers[-1].params["weight"].shape == (256, 128)


def test_feature_maps_grow_where_dlib_pads_a_smaller_block_output(model_path):
    """Strided 3x3 convolutions without padding shrink 8 -> 3 and 4 -> 1 while the 2x2 average-pool shortcut gives
    4 and 2: dlib's add_prev keeps the larger size, so the blocks after run at 4x4."""
    shapes = load_dlib_resnet(model_path).conv_shapes()
    sides = [side for _inputs, _outputs, _kernel, side in shapes]
    assert sides == [72] + [35] * 6 + [17] * 8 + [8] * 6 + [3, 3] + [4] * 4 + [1, 1]
    assert shapes[0] == (3, 32, 7, 72) and shapes[-1] == (256, 256, 3, 1)


def test_torch_descriptor_matches_dlib_on_the_sample_photos(model_path, sample_faces, dlib_reference):
    """Same chip as ``compute_face_descriptor(img, shape, 0, 0.25)``, same descriptor to a cosine of 0.99999."""
    expected = np.array([dlib_reference.compute_face_descriptor(rgb, shape, 0, 0.25) for rgb, shape in sample_faces])
    chips = [dlib.get_face_chip(rgb, shape, size=150, padding=0.25) for rgb, shape in sample_faces]
    got = DlibTorchDescriptor(model_path)(chips)
    assert len(sample_faces) == 8 and got.shape == (8, 128) and got.dtype == np.float32
    assert _cosine(got, expected).min() >= 0.99999
    assert np.abs(got - expected).max() < 1e-4


def test_a_batch_gives_each_chip_its_own_descriptor(model_path, sample_faces):
    chips = [dlib.get_face_chip(rgb, shape, size=150, padding=0.25) for rgb, shape in sample_faces[:3]]
    descriptor = DlibTorchDescriptor(model_path, batch_size=2)
    batched = descriptor(chips)
    one_by_one = np.concatenate([descriptor([chip]) for chip in chips])
    assert np.abs(batched - one_by_one).max() < 1e-5
    assert descriptor([]).shape == (0, 128)


def test_the_network_is_parsed_once_per_process(model_path):
    assert load_dlib_resnet(model_path) is load_dlib_resnet(str(model_path))


def test_add_prev_pads_the_smaller_tensor_with_zeros_at_the_end():
    block = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    shortcut = torch.ones(1, 1, 4, 4)
    total = _add_zero_padded(block, shortcut)
    expected = np.zeros((1, 2, 4, 4), dtype=np.float32)
    expected[:, :2, :3, :3] += block.numpy()
    expected[:, :1] += 1.0
    assert total.shape == (1, 2, 4, 4) and np.array_equal(total.numpy(), expected)


def test_a_file_that_is_not_a_network_names_the_file_and_the_fix(tmp_path, model_path):
    truncated = tmp_path / DESCRIPTOR_FILE
    truncated.write_bytes(model_path.read_bytes()[:5000])
    with pytest.raises(ModelFilesMissingError, match="unexpected end of file") as caught:
        read_dlib_network(truncated)
    assert str(truncated) in str(caught.value) and "pip install --force-reinstall" in str(caught.value)
    with pytest.raises(ModelFilesMissingError, match="dlib model file missing"):
        read_dlib_network(tmp_path / "absent.dat")


def test_backend_runs_torch_by_default_and_dlib_on_request(dlib_analyzer, astronaut_rgb):
    torch_faces = dlib_analyzer.detect(astronaut_rgb, channels="rgb")
    dlib_faces = FaceAnalyzer("dlib", dlib_descriptor="dlib").detect(astronaut_rgb, channels="rgb")
    assert dlib_analyzer.backend.descriptor == "torch"
    assert len(torch_faces) == len(dlib_faces) == 1
    assert float(torch_faces[0].normed_embedding @ dlib_faces[0].normed_embedding) >= 0.99999
    assert torch_faces[0].face_model == dlib_faces[0].face_model == "dlib/resnet_v1"


def test_bad_descriptor_options_are_refused():
    with pytest.raises(BackendError, match="must be 'torch' or 'dlib', got 'onnx'"):
        DlibBackend(descriptor="onnx")
    with pytest.raises(BackendError, match="needs descriptor='torch'"):
        DlibBackend(descriptor="dlib", device="cuda")


def test_workers_share_the_cores_for_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # restored after the test: the call sets it for this process
    monkeypatch.setattr("faceprompt.faces.workers.usable_cores", lambda: 4)
    try:
        assert share_cores_between_workers(2) == 2 and torch.get_num_threads() == 2
        assert share_cores_between_workers(8) == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_descriptor_runs_in_float16_and_still_matches(model_path, sample_faces, dlib_reference):
    expected = np.array([dlib_reference.compute_face_descriptor(rgb, shape, 0, 0.25) for rgb, shape in sample_faces])
    chips = [dlib.get_face_chip(rgb, shape, size=150, padding=0.25) for rgb, shape in sample_faces]
    descriptor = DlibTorchDescriptor(model_path, device="cuda")
    assert descriptor.dtype == torch.float16 and descriptor.network.fc.weight.device.type == "cuda"
    assert _cosine(descriptor(chips), expected).min() >= 0.999


def test_a_device_is_refused_where_it_would_be_ignored(tmp_path):
    from faceprompt.faces import create_backend
    from faceprompt.testing import write_standin_insightface_pack

    write_standin_insightface_pack(tmp_path, "buffalo_l")
    with pytest.raises(BackendError, match="insightface backend runs on ONNX Runtime"):
        create_backend("auto", tmp_path, device="cuda")
    assert DlibBackend(descriptor="dlib", device="cpu").descriptor == "dlib"  # the CPU is where it runs anyway
