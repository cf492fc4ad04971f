"""Real photos shipped inside installed packages, used by the offline demo, tests and benchmarks.

No photo is bundled with faceprompt: insightface and scikit-image ship these with their wheels.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ImageNotFoundError

#: name -> (package, path inside the package, what it shows)
SAMPLE_PHOTOS: dict[str, tuple[str, str, str]] = {
    "group": ("insightface", "data/images/t1.jpg", "group photo, 6 people"),
    "tom_hanks": ("insightface", "data/images/Tom_Hanks_54745.png", "112-px aligned portrait"),
    "astronaut": ("skimage", "data/astronaut.png", "512-px portrait (Eileen Collins, NASA)"),
}


def sample_photo(name: str) -> Path:
    """Path of a shipped sample photo (``"group"``, ``"tom_hanks"``, ``"astronaut"``)."""
    if name not in SAMPLE_PHOTOS:
        raise KeyError(f"unknown sample photo {name!r}; choose one of {sorted(SAMPLE_PHOTOS)}")
    package, relative, _ = SAMPLE_PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImageNotFoundError(f"sample photo {name!r} needs the '{package}' package installed", None)
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ImageNotFoundError(f"sample photo {name!r} is missing from the installed '{package}'", path)
    return path


def sample_photos() -> dict[str, Path]:
    """All sample photos by name."""
    return {name: sample_photo(name) for name in SAMPLE_PHOTOS}
