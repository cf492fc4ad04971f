"""DlibBackend.detector_passes: how many HOG passes ran at each upsample level."""

import numpy as np

from faceprompt.faces.backends.dlib_backend import DlibBackend
from faceprompt.images import load_image


def test_a_portrait_needs_one_pass_and_a_faceless_photo_tries_every_level(astronaut_path):
    backend = DlibBackend()
    assert backend.detector_passes == {}
    backend.detect_boxes(load_image(astronaut_path).rgb)
    assert backend.detector_passes == {0: 1}
    blank = np.full((64, 64, 3), 128, dtype=np.uint8)  # 64x64 upsampled twice is 256x256: under the pixel cap
    backend.detect_boxes(blank)
    assert backend.detector_passes == {0: 2, 1: 1, 2: 1}
    backend.detector_passes.clear()
    backend.detect_boxes(blank)
    assert backend.detector_passes == {0: 1, 1: 1, 2: 1}


def test_a_fixed_upsample_level_is_one_pass_at_that_level():
    backend = DlibBackend(upsample=1)
    backend.detect_boxes(np.full((64, 64, 3), 128, dtype=np.uint8))
    assert backend.detector_passes == {1: 1}
