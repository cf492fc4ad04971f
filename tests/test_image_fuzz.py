"""Fuzz test of the image loader: crafted bytes either load as RGB uint8 or raise one of faceprompt's image errors.

The corpus is the shipped sample photos, re-encoded small (so each decode is cheap) in the formats and modes the
loader handles: JPEG (baseline with a camera's EXIF block and orientation, progressive, CMYK), PNG (RGB, palette
with transparency, 16-bit grey), WebP (lossy, lossless with alpha, animated), GIF (animated), BMP and TIFF. Each
case applies one to three mutations to one of them: byte flips (anywhere, and in the headers and EXIF block),
truncation, inserted, deleted and repeated chunks, and size fields of the header set to huge or zero values (with
the PNG header's checksum fixed so that the decoder trusts them).

The cases run in worker processes, so that a crash in a C decoder or a hang is caught and reported with the case
that caused it; each case is reproducible alone from its number (``mutated_case(number)``).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from faceprompt.samples import sample_photo

#: Seed of every case's generator: case ``n`` uses ``numpy.random.default_rng([FUZZ_SEED, n])``.
FUZZ_SEED = 20_240_512
CASE_COUNT = 10_000
#: The loader's pixel budget in the fuzz run: a header that claims more is refused before decoding; a header that
#: claims less is decoded, so the budget is kept small to keep each case cheap.
FUZZ_MAX_PIXELS = 1 << 20
#: A case that takes longer than this is a hang (a clean case takes about a millisecond).
CASE_TIMEOUT_S = 10.0
IMAGE_ERRORS = ("ImageDecodeError", "ImageTooLargeError", "ImageFormatError", "ImageNotFoundError")


@dataclass(frozen=True)
class SeedImage:
    name: str
    suffix: str
    data: bytes


@dataclass(frozen=True)
class FuzzCase:
    number: int
    seed_name: str
    suffix: str
    mutations: tuple[str, ...]
    data: bytes

    def describe(self) -> str:
        return (
            f"case {self.number} (rng seed [{FUZZ_SEED}, {self.number}]): {self.seed_name} "
            f"with {'; '.join(self.mutations)}; mutated_case({self.number}) in tests/test_image_fuzz.py gives its bytes"
        )


def _small(name: str, size: tuple[int, int]) -> Image.Image:
    photo = Image.open(sample_photo(name)).convert("RGB")
    return photo.resize(size, Image.Resampling.LANCZOS)


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _camera_exif() -> Image.Exif:
    """EXIF as a camera writes it: an orientation, strings, rationals, a GPS block and a maker note."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "EOS", "firmware 1.0"
    exif[0x011A] = TiffImagePlugin.IFDRational(72, 1)
    exif[0x8825] = {1: "N", 2: tuple(TiffImagePlugin.IFDRational(value, 1) for value in (1, 2, 3))}
    exif[0x8769] = {0x9003: "2020:01:01 00:00:00", 0x927C: b"maker" * 10, 0x829A: TiffImagePlugin.IFDRational(1, 100)}
    return exif


@lru_cache(maxsize=1)
def seed_images() -> tuple[SeedImage, ...]:
    """The unmutated corpus: the sample photos at 48-64 px in every format and mode the loader handles."""
    astronaut = _small("astronaut", (48, 48))
    tom_hanks = _small("tom_hanks", (40, 40))
    group = _small("group", (64, 44))
    exif = _camera_exif()
    palette = tom_hanks.quantize(16)
    palette.info["transparency"] = 0
    rgba = tom_hanks.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    gray16 = Image.fromarray(np.asarray(group.convert("L"), dtype=np.uint16) * 257)
    frames = [astronaut, astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return (
        SeedImage("astronaut-exif.jpg", ".jpg", _encode(astronaut, "JPEG", quality=80, exif=exif.tobytes())),
        SeedImage("group-progressive.jpg", ".jpg", _encode(group, "JPEG", quality=70, progressive=True)),
        SeedImage("tom-hanks-cmyk.jpg", ".jpg", _encode(tom_hanks.convert("CMYK"), "JPEG", quality=80)),
        SeedImage("astronaut.png", ".png", _encode(astronaut, "PNG")),
        SeedImage("tom-hanks-palette.png", ".png", _encode(palette, "PNG")),
        SeedImage("group-gray16.png", ".png", _encode(gray16, "PNG")),
        SeedImage("astronaut.webp", ".webp", _encode(astronaut, "WEBP", quality=70)),
        SeedImage("tom-hanks-alpha.webp", ".webp", _encode(rgba, "WEBP", lossless=True)),
        SeedImage("astronaut-animated.webp", ".webp",
                  _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)),
        SeedImage("astronaut-animated.gif", ".gif",
                  _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)),
        SeedImage("group.bmp", ".bmp", _encode(group, "BMP")),
        SeedImage("tom-hanks.tif", ".tif", _encode(tom_hanks, "TIFF", compression="tiff_deflate")),
    )


# --- mutations --------------------------------------------------------------------------------------------------
# Each takes the bytes and the case's generator and returns the mutated bytes and a description.


def _flip_bytes(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    mutated = bytearray(data)
    positions = rng.integers(0, len(data), size=int(rng.integers(1, 9)))
    for position in positions:
        mutated[position] ^= int(rng.integers(1, 256))
    return bytes(mutated), f"bytes flipped at {sorted(positions.tolist())}"


def _flip_header_bytes(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Byte flips where the decoder reads structure: the EXIF block if there is one, else the first 256 bytes."""
    found = data.find(b"Exif\x00\x00")
    start, end = (found + 6, min(len(data), found + 400)) if found >= 0 else (0, min(len(data), 256))
    mutated = bytearray(data)
    positions = rng.integers(start, end, size=int(rng.integers(1, 5)))
    for position in positions:
        mutated[position] ^= int(rng.integers(1, 256))
    return bytes(mutated), f"header bytes flipped at {sorted(positions.tolist())}"


def _truncate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    end = int(rng.integers(0, len(data)))
    return data[:end], f"truncated to {end} bytes"


def _insert_chunk(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    position = int(rng.integers(0, len(data) + 1))
    chunk = rng.integers(0, 256, size=int(rng.integers(1, 257)), dtype=np.uint8).tobytes()
    return data[:position] + chunk + data[position:], f"{len(chunk)} random bytes inserted at {position}"


def _delete_chunk(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    start = int(rng.integers(0, len(data)))
    end = min(len(data), start + int(rng.integers(1, 257)))
    return data[:start] + data[end:], f"bytes {start}:{end} deleted"


def _repeat_chunk(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    start = int(rng.integers(0, len(data)))
    end = min(len(data), start + int(rng.integers(1, 513)))
    return data[:end] + data[start:end] + data[end:], f"bytes {start}:{end} repeated"


#: Values written into size fields: zero, one, the largest values of their width, and a few in between.
_HUGE_VALUES = (0, 1, 0x7FFF, 0xFFFF, 0x3FFF, 0x00FF_FFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 30_000, 100_000)


def _huge_size_field(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Set the width or height the header declares to a huge (or zero) value, where the format keeps it."""
    value = int(rng.choice(_HUGE_VALUES))
    field = _size_field(data, rng)
    if field is None or field[0] + field[1] > len(data):  # no known header (or cut off): any early 32-bit field
        offset = int(rng.integers(0, max(1, min(60, len(data) - 4))))
        field = (offset, 4, "<I", f"4 bytes at {offset}")
    offset, width, layout, name = field
    mutated = bytearray(data)
    packed = struct.pack(layout, value & ((1 << 8 * width) - 1))
    mutated[offset:offset + width] = packed[:width]
    if name.startswith("PNG") and len(data) >= 33:  # fix IHDR's checksum so that the decoder trusts the size
        mutated[29:33] = struct.pack(">I", zlib.crc32(bytes(mutated[12:29])))
    return bytes(mutated[:len(data)]), f"{name} set to {value & ((1 << 8 * width) - 1)}"


def _size_field(data: bytes, rng: np.random.Generator) -> tuple[int, int, str, str] | None:
    """(offset, byte width, struct layout, description) of a width or height field of the header."""
    second = int(rng.integers(0, 2))  # 0: the first field (width or height), 1: the other
    if data.startswith(b"\x89PNG"):  # IHDR: width and height as big-endian uint32 at 16 and 20
        return 16 + 4 * second, 4, ">I", f"PNG IHDR {('width', 'height')[second]} (checksum fixed)"
    if data.startswith(b"\xff\xd8"):  # SOFn: length, precision, then height and width as big-endian uint16
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            found = data.find(marker)
            if found >= 0:
                return found + 5 + 2 * second, 2, ">H", f"JPEG SOF {('height', 'width')[second]}"
    if data[8:12] == b"WEBP":
        for chunk, start, width in ((b"VP8X", 12, 3), (b"VP8 ", 14, 2), (b"VP8L", 9, 2)):
            found = data.find(chunk)
            if found >= 0:  # VP8X: canvas size - 1 as uint24; VP8: 14-bit sizes; VP8L: 14-bit sizes packed
                return found + start + width * second, width, "<I", f"WebP {chunk.decode().strip()} size field"
    if data.startswith(b"GIF"):  # logical screen width and height as little-endian uint16
        return 6 + 2 * second, 2, "<H", f"GIF screen {('width', 'height')[second]}"
    if data.startswith(b"BM"):  # BITMAPINFOHEADER width and height as little-endian int32
        return 18 + 4 * second, 4, "<I", f"BMP {('width', 'height')[second]}"
    return None


MUTATIONS = (_flip_bytes, _flip_header_bytes, _truncate, _insert_chunk, _delete_chunk, _repeat_chunk, _huge_size_field)


def mutated_case(number: int) -> FuzzCase:
    """Case ``number`` of the fuzz run: the same bytes on every machine."""
    rng = np.random.default_rng([FUZZ_SEED, number])
    seeds = seed_images()
    seed = seeds[int(rng.integers(0, len(seeds)))]
    data, mutations = seed.data, []
    for _ in range(int(rng.integers(1, 4))):
        if not data:
            break
        mutate = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
        data, description = mutate(data, rng)
        mutations.append(description)
    # now and then under the wrong name: the loader must go by the content
    suffix = seed.suffix if rng.random() < 0.9 else str(rng.choice([".jpg", ".png", ".webp", ".txt"]))
    return FuzzCase(number, seed.name, suffix, tuple(mutations), data)


# --- the run ----------------------------------------------------------------------------------------------------

#: Runs in a worker process: loads every case in the folder it is given and prints one JSON line per case.
#: The line "start N" comes before case N, so that a crash or hang names the case that caused it.
_WORKER = textwrap.dedent(
    """
    import faulthandler, json, sys, warnings
    from pathlib import Path
    import numpy as np
    from faceprompt.errors import ImageError
    from faceprompt.images import load_image

    warnings.simplefilter("error")  # a warning that escapes the loader fails the case
    folder, max_pixels, timeout = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    for path in sorted(folder.iterdir(), key=lambda p: int(p.stem)):
        print("start", path.stem, flush=True)
        faulthandler.dump_traceback_later(timeout, exit=True)
        try:
            loaded = load_image(path, max_pixels=max_pixels)
        except ImageError as error:
            outcome = {"error": type(error).__name__, "message": str(error)}
        except BaseException as error:
            outcome = {"unexpected": type(error).__module__ + "." + type(error).__name__, "message": str(error)[:300]}
        else:
            rgb = loaded.rgb
            valid = (
                isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
                and 0 < rgb.shape[0] * rgb.shape[1] <= max_pixels and len(loaded.sha256) == 64
            )
            outcome = {"loaded": list(rgb.shape)}
            if not valid:
                outcome = {"unexpected": "invalid result", "message": repr(rgb)[:300]}
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps({"case": int(path.stem), **outcome}), flush=True)
    """
)


def _write_cases(folder: Path, numbers: range) -> dict[int, FuzzCase]:
    folder.mkdir(parents=True)
    cases = {}
    for number in numbers:
        case = mutated_case(number)
        (folder / f"{number}{case.suffix}").write_bytes(case.data)
        cases[number] = case
    return cases


def _start_worker(folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(folder), str(FUZZ_MAX_PIXELS), str(CASE_TIMEOUT_S)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_worker(worker: subprocess.Popen, cases: dict[int, FuzzCase], deadline_s: float) -> list[dict]:
    try:
        stdout, stderr = worker.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        worker.kill()
        stdout, stderr = worker.communicate()
    lines = stdout.splitlines()
    outcomes = [json.loads(line) for line in lines if line.startswith("{")]
    if worker.returncode != 0:
        started = [int(line.split()[1]) for line in lines if line.startswith("start")]
        culprit = cases[started[-1]].describe() if started else "before the first case"
        pytest.fail(f"the loader crashed or hung (exit code {worker.returncode}) on {culprit}\n{stderr[-3000:]}")
    return outcomes


def test_mutated_images_load_or_raise_image_errors(tmp_path):
    started = time.perf_counter()
    workers = max(1, min(2, os.cpu_count() or 1))
    shares = [range(share, CASE_COUNT, workers) for share in range(workers)]
    runs = []
    for index, numbers in enumerate(shares):
        folder = tmp_path / f"worker-{index}"
        cases = _write_cases(folder, numbers)
        runs.append((_start_worker(folder), cases))
    outcomes = [outcome for worker, cases in runs for outcome in _check_worker(worker, cases, 240.0)]
    elapsed = time.perf_counter() - started

    assert len(outcomes) == CASE_COUNT
    cases = {number: case for _, share in runs for number, case in share.items()}
    unexpected = [outcome for outcome in outcomes if "unexpected" in outcome]
    assert not unexpected, "\n".join(
        f"{cases[o['case']].describe()}: {o['unexpected']}: {o['message']}" for o in unexpected[:10]
    ) + f"\n({len(unexpected)} cases in all)"
    errors = [outcome for outcome in outcomes if "error" in outcome]
    assert {outcome["error"] for outcome in errors} <= set(IMAGE_ERRORS)
    loaded = len(outcomes) - len(errors)
    # the mutations must exercise both ways out: some bytes still decode, most are refused
    assert 0.02 * CASE_COUNT < loaded < 0.9 * CASE_COUNT, f"{loaded} of {CASE_COUNT} cases loaded"
    print(f"{CASE_COUNT} cases in {elapsed:.1f} s: {loaded} loaded, {len(errors)} refused")


def test_every_seed_image_loads_unmutated(tmp_path):
    """The corpus itself is valid: a refusal in the fuzz run comes from the mutation, not the seed."""
    from faceprompt.images import load_image

    for seed in seed_images():
        path = tmp_path / f"{seed.name}"
        path.write_bytes(seed.data)
        rgb = load_image(path).rgb
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, seed.name
