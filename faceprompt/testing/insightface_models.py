"""Stand-in insightface model packs for offline tests.

The real insightface packs (``buffalo_l``, ``antelopev2``) cannot be downloaded
in tests, so this module writes ONNX models with the same file names and the
same input/output contract.  insightface's ``model_zoo`` router classifies a
model by its signature alone (>= 5 outputs: SCRFD detector; one square input
of side >= 112: ArcFace recognizer), so the stand-ins load through exactly the
code path the real files take.  Their weights are fixed or random: the faces
they "detect" and the embeddings they compute are meaningless beyond being
deterministic and image-dependent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["STANDIN_NOTICE", "write_standin_insightface_pack"]

STANDIN_NOTICE = (
    "Stand-in insightface models with fixed/random weights, for tests only: "
    "not the real buffalo_l/antelopev2 networks and useless for real face analysis."
)

# (detector file, recognizer file) of each real pack, as its zip extracts them.
_PACK_FILES: dict[str, tuple[str, str]] = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}

# Opset 13 keeps ReduceMax's axes an attribute and is read by every ORT >= 1.8.
_OPSET = 13
_IR_VERSION = 7
_PRODUCER = "faceprompt.testing.insightface_models"
_INPUT_NAME = "input.1"

# SCRFD with 5 keypoints: three strides and two anchors per location.  The
# anchor boxes are squares of side 2 * half * stride pixels, i.e. 16/32,
# 64/128 and 256/512 px, the anchor sizes of the real SCRFD-10G.
_DET_ANCHOR_HALF_CELLS: dict[int, tuple[int, int]] = {8: (1, 2), 16: (2, 4), 32: (4, 8)}
_DET_STRIDES: tuple[int, ...] = tuple(_DET_ANCHOR_HALF_CELLS)
# SCRFD feeds (pixel - 127.5) / 128 in RGB order.  A pixel whose raw channel
# mean is <= 1/6 (channel sum <= 0.5) is pure black, the colour SCRFD
# letterboxes the image with; its normalised luma is then <= this value.
_BLACK_LUMA = (1 / 6 - 127.5) / 128.0
# A window's score is a sigmoid of its contrast relative to the most
# contrasted window of the image: ratio 1.0 scores sigmoid(2) ~ 0.88 and the
# default threshold 0.5 is crossed at ratio 0.9.
_DET_SCORE_GAIN = 20.0
_DET_RELATIVE_CONTRAST = 0.9
# Below this luma standard deviation (in normalised units, ~2.5 grey levels)
# an image is treated as blank and yields no detection.
_DET_MIN_CONTRAST = 0.02
_DET_EPS = 1e-6
# Keypoints of the ArcFace alignment template in a 112x112 crop (left eye,
# right eye, nose, left and right mouth corner), as insightface aligns them.
_ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

_REC_INPUT_SIZE = 112
_REC_POOL = 16  # 112 / 16 = 7: a 7x7 colour grid of 147 features
_REC_EMBEDDING_SIZE = 512


class _GraphBuilder:
    """Collects nodes and initializers; every node gets a readable unique name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name=name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attributes: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output

    def channel(self, tensor: str, index: int, output: str) -> str:
        """Slice channel ``index`` of an NCHW tensor, keeping the channel axis."""
        bounds = [self.constant(f"{output}_{part}", np.array([value], np.int64))
                  for part, value in (("start", index), ("end", index + 1), ("axis", 1))]
        return self.op("Slice", [tensor, *bounds], output)


def _finish_model(builder: _GraphBuilder, name: str, inputs: list, outputs: list) -> onnx.ModelProto:
    graph = helper.make_graph(builder.nodes, name, inputs, outputs, initializer=builder.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        ir_version=_IR_VERSION,
        producer_name=_PRODUCER,
        doc_string=STANDIN_NOTICE,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _build_detector() -> onnx.ModelProto:
    """SCRFD-shaped detector: input ``[1,3,?,?]``, 9 unbatched outputs.

    insightface 2.1 reads 9 outputs as ``fmc = 3`` strides (8, 16, 32) with
    two anchors per location and keypoints, ordered score_8, score_16,
    score_32, bbox_8, ..., kps_32, each ``[cells * 2, C]`` with rows in
    (row, column, anchor) order.

    Each anchor scores the square window that its box will cover: the luma
    standard deviation in the window, weighted towards larger windows, divided
    by the largest such value over the whole image.  Windows that touch pure
    black pixels (the letterbox padding) or leave the tensor are zeroed, so
    every box lies on image content; only local maxima of a map are kept, so
    there are few overlapping candidates.  The box and keypoint heads are 1x1
    convolutions with zero weights, so their output is the bias: a box exactly
    covering the window and the ArcFace landmark template placed in it.
    """
    builder = _GraphBuilder()
    image = helper.make_tensor_value_info(_INPUT_NAME, TensorProto.FLOAT, [1, 3, "?", "?"])

    luma = builder.op(
        "Conv", [_INPUT_NAME, builder.constant("luma_weight", np.full((1, 3, 1, 1), 1 / 3, np.float32))], "luma"
    )
    luma_squared = builder.op("Mul", [luma, luma], "luma_squared")
    luma_moments = builder.op("Concat", [luma, luma_squared], "luma_moments", axis=1)
    is_content = builder.op(
        "Greater", [luma, builder.constant("black_luma", np.array(_BLACK_LUMA, np.float32))], "is_content"
    )
    is_black = builder.op("Not", [is_content], "is_black_bool")
    black = builder.op("Cast", [is_black], "is_black", to=TensorProto.FLOAT)

    one = builder.constant("one", np.array(1.0, np.float32))
    crop_starts = builder.constant("crop_starts", np.array([0, 0], np.int64))
    crop_ends = builder.constant("crop_ends", np.array([-1, -1], np.int64))
    crop_axes = builder.constant("crop_axes", np.array([2, 3], np.int64))

    contrast_maps: dict[tuple[int, int], str] = {}
    window_is_content: dict[tuple[int, int], str] = {}
    cell_features: dict[int, str] = {}
    for stride in _DET_STRIDES:
        cell_moments = builder.op(
            "AveragePool", [luma_moments], f"cell_moments_{stride}",
            kernel_shape=[stride, stride], strides=[stride, stride],
        )
        cell_black = builder.op(
            "MaxPool", [black], f"cell_black_{stride}", kernel_shape=[stride, stride], strides=[stride, stride]
        )
        cell_features[stride] = cell_moments
        for half in _DET_ANCHOR_HALF_CELLS[stride]:
            tag = f"{stride}_{half}"
            side = 2 * half
            # Output (y, x) covers cells [y - half, y + half): the pixels of the
            # anchor box centred on (x * stride, y * stride).  The extra last
            # row/column produced by the symmetric padding is cropped.
            window_moments = builder.op(
                "AveragePool", [cell_moments], f"window_moments_uncropped_{tag}",
                kernel_shape=[side, side], pads=[half] * 4, count_include_pad=0,
            )
            window_moments = builder.op(
                "Slice", [window_moments, crop_starts, crop_ends, crop_axes], f"window_moments_{tag}"
            )
            mean = builder.channel(window_moments, 0, f"window_mean_{tag}")
            mean_of_squares = builder.channel(window_moments, 1, f"window_mean_of_squares_{tag}")
            squared_mean = builder.op("Mul", [mean, mean], f"window_squared_mean_{tag}")
            variance = builder.op("Sub", [mean_of_squares, squared_mean], f"window_variance_raw_{tag}")
            variance = builder.op("Relu", [variance], f"window_variance_{tag}")
            std = builder.op("Sqrt", [variance], f"window_std_{tag}")

            # Cells outside the tensor count as black, so windows must fit.
            black_pads = builder.constant(f"black_pads_{tag}", np.array([0, 0, half, half] * 2, np.int64))
            padded_black = builder.op("Pad", [cell_black, black_pads, one], f"padded_black_{tag}", mode="constant")
            window_black = builder.op(
                "MaxPool", [padded_black], f"window_black_uncropped_{tag}", kernel_shape=[side, side]
            )
            window_black = builder.op(
                "Slice", [window_black, crop_starts, crop_ends, crop_axes], f"window_black_{tag}"
            )
            content = builder.op("Sub", [one, window_black], f"window_is_content_{tag}")
            window_is_content[(stride, half)] = content

            size_weight = (2 * half * stride / 512.0) ** 0.25
            weighted = builder.op(
                "Mul", [std, builder.constant(f"size_weight_{tag}", np.array(size_weight, np.float32))],
                f"weighted_std_{tag}",
            )
            contrast_maps[(stride, half)] = builder.op("Mul", [weighted, content], f"contrast_{tag}")

    map_maxima = [
        builder.op("ReduceMax", [contrast], f"max_{contrast}", keepdims=1) for contrast in contrast_maps.values()
    ]
    image_max = builder.op("Max", map_maxima, "image_max_contrast")
    has_contrast = builder.op(
        "Greater", [image_max, builder.constant("min_contrast", np.array(_DET_MIN_CONTRAST, np.float32))],
        "has_contrast_bool",
    )
    has_contrast = builder.op("Cast", [has_contrast], "has_contrast", to=TensorProto.FLOAT)
    denominator = builder.op(
        "Add", [image_max, builder.constant("eps", np.array(_DET_EPS, np.float32))], "image_max_contrast_safe"
    )
    gain = builder.constant("score_gain", np.array(_DET_SCORE_GAIN, np.float32))
    relative_threshold = builder.constant("relative_contrast", np.array(_DET_RELATIVE_CONTRAST, np.float32))

    to_rows = [0, 2, 3, 1]  # NCHW -> N, H, W, C so rows run (y, x, anchor)
    outputs: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    template = _ARCFACE_TEMPLATE_112 / 112.0 - 0.5  # keypoints relative to the box centre, box side 1
    for stride in _DET_STRIDES:
        anchor_scores = []
        for half in _DET_ANCHOR_HALF_CELLS[stride]:
            tag = f"{stride}_{half}"
            contrast = contrast_maps[(stride, half)]
            neighbourhood_max = builder.op(
                "MaxPool", [contrast], f"neighbourhood_max_{tag}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            )
            is_peak = builder.op("Equal", [contrast, neighbourhood_max], f"is_peak_bool_{tag}")
            is_peak = builder.op("Cast", [is_peak], f"is_peak_{tag}", to=TensorProto.FLOAT)
            ratio = builder.op("Div", [contrast, denominator], f"relative_contrast_{tag}")
            logit = builder.op("Sub", [ratio, relative_threshold], f"relative_margin_{tag}")
            logit = builder.op("Mul", [logit, gain], f"score_logit_{tag}")
            score = builder.op("Sigmoid", [logit], f"score_raw_{tag}")
            score = builder.op("Mul", [score, is_peak], f"score_peak_{tag}")
            score = builder.op("Mul", [score, window_is_content[(stride, half)]], f"score_content_{tag}")
            anchor_scores.append(builder.op("Mul", [score, has_contrast], f"score_{tag}"))
        score_map = builder.op("Concat", anchor_scores, f"score_map_{stride}", axis=1)

        halves = np.array(_DET_ANCHOR_HALF_CELLS[stride], np.float32)
        # SCRFD multiplies the regressions by the stride, so they are in cells.
        box_bias = np.repeat(halves, 4)  # (left, top, right, bottom) per anchor
        kps_bias = np.concatenate([(template * 2 * half).reshape(-1) for half in halves]).astype(np.float32)
        for kind, bias, width in (("bbox", box_bias, 4), ("kps", kps_bias, 10)):
            head_weight = builder.constant(f"{kind}_weight_{stride}", np.zeros((bias.size, 2, 1, 1), np.float32))
            head_bias = builder.constant(f"{kind}_bias_{stride}", bias)
            head = builder.op("Conv", [cell_features[stride], head_weight, head_bias], f"{kind}_map_{stride}")
            outputs[kind].append((head, width))
        outputs["score"].append((score_map, 1))

    graph_outputs = []
    for kind in ("score", "bbox", "kps"):
        for stride, (head, width) in zip(_DET_STRIDES, outputs[kind]):
            rows = builder.op("Transpose", [head], f"{kind}_rows_{stride}", perm=to_rows)
            name = builder.op(
                "Reshape", [rows, builder.constant(f"{kind}_shape_{stride}", np.array([-1, width], np.int64))],
                f"{kind}_{stride}",
            )
            graph_outputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"candidates_{stride}", width])
            )
    return _finish_model(builder, "standin_scrfd", [image], graph_outputs)


def _build_recognizer(seed: int) -> onnx.ModelProto:
    """ArcFace-shaped recognizer: ``[N,3,112,112]`` -> ``[N,512]``.

    A 7x7 average-pooled colour grid, centred per sample, times a fixed random
    matrix: the same crop always gives the same embedding, different crops
    give different ones.  Node names avoid the ``Sub``/``Mul`` prefixes that
    make insightface treat a model as an MXNet export with in-graph
    normalisation, so it feeds (pixel - 127.5) / 127.5 like the real packs.
    """
    rng = np.random.default_rng(seed)
    features = 3 * (_REC_INPUT_SIZE // _REC_POOL) ** 2
    projection = (rng.standard_normal((features, _REC_EMBEDDING_SIZE)) / np.sqrt(features)).astype(np.float32)

    builder = _GraphBuilder()
    face = helper.make_tensor_value_info(_INPUT_NAME, TensorProto.FLOAT, ["None", 3, _REC_INPUT_SIZE, _REC_INPUT_SIZE])
    grid = builder.op(
        "AveragePool", [_INPUT_NAME], "colour_grid", kernel_shape=[_REC_POOL, _REC_POOL], strides=[_REC_POOL, _REC_POOL]
    )
    flat = builder.op("Flatten", [grid], "grid_features", axis=1)
    mean = builder.op("ReduceMean", [flat], "grid_mean", axes=[1], keepdims=1)
    centred = builder.op("Sub", [flat, mean], "centred_features")
    embedding = builder.op(
        "Gemm", [centred, builder.constant("projection", projection)], "embedding"
    )
    output = helper.make_tensor_value_info(embedding, TensorProto.FLOAT, ["None", _REC_EMBEDDING_SIZE])
    return _finish_model(builder, "standin_arcface", [face], [output])


def write_standin_insightface_pack(model_root: str | Path, name: str = "buffalo_l", seed: int = 0) -> Path:
    """Write stand-in models to ``<model_root>/models/<name>/`` and return that folder.

    The folder holds the pack's detector and recognizer under their real file
    names and no manifest, so ``FaceAnalysis(name=<folder>)`` (or
    ``FaceAnalysis(name=<name>, root=<model_root>)``) loads it through
    insightface's legacy shape-based routing.  ``seed`` fixes the
    recognizer's random projection; the output is byte-identical per seed.
    Existing files of the same names are overwritten.
    """
    if name not in _PACK_FILES:
        raise ValueError(f"unknown insightface pack {name!r}; expected one of {sorted(_PACK_FILES)}")
    detector_file, recognizer_file = _PACK_FILES[name]
    pack_dir = Path(model_root) / "models" / name
    pack_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(_build_detector(), pack_dir / detector_file)
    onnx.save_model(_build_recognizer(seed), pack_dir / recognizer_file)
    return pack_dir
