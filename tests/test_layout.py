"""The house rules of the package: data flows one way through the stages, and no module mixes many concerns.

Every ``import`` of a faceprompt module is read from the source (the ones inside functions too), so a lazy import
that climbs back up a stage fails here as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "faceprompt"

#: Stage of each top-level module or folder; a module may import only from stages with a lower or equal number.
STAGES = {
    "errors": 0,
    "devices": 1, "files": 1, "images": 1, "samples": 1, "weights": 1,
    "faces": 2,
    "identity": 3,
    "adapters": 4, "adaface": 4,
    "testing": 5,
    "pipelines": 6, "compat": 6,
    "training": 7, "evaluation": 7,
    "cli": 8, "server": 8,
}
#: A module longer than this mixes concerns: split it along them (section banners are the hint).
MAX_LINES = 650


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py"))


def _stage_of(parts: tuple[str, ...]) -> str | None:
    return parts[0] if parts and parts[0] in STAGES else None


def _imported_stages(source: str, package_parts: tuple[str, ...]) -> set[tuple[str, int]]:
    """(imported stage, line) for every faceprompt import in ``source``, relative or absolute; ``package_parts``
    is the package the module lies in, e.g. ``("faceprompt", "pipelines")``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = (*base, *(node.module or "").split(".")) if node.module else base
                names = [target] if node.module else [(*base, alias.name) for alias in node.names]
            elif node.module and node.module.split(".")[0] == "faceprompt":
                names = [tuple(node.module.split("."))]
            else:
                continue
            for name in names:
                stage = _stage_of(tuple(part for part in name[1:] if part))
                if stage:
                    found.add((stage, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = tuple(alias.name.split("."))
                if parts[0] == "faceprompt" and _stage_of(parts[1:]):
                    found.add((_stage_of(parts[1:]), node.lineno))
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_only_flow_downwards(path: Path) -> None:
    own = _stage_of(path.relative_to(PACKAGE).with_suffix("").parts)
    if own is None:  # faceprompt/__init__.py: the lazy public names
        return
    package_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    imported = _imported_stages(path.read_text(encoding="utf-8"), package_parts)
    climbs = sorted((stage, line) for stage, line in imported if STAGES[stage] > STAGES[own])
    assert not climbs, f"{path.relative_to(PACKAGE)} ({own}) imports from later stages: {climbs}"


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_mixes_many_concerns(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it along its concerns"


def test_every_module_has_a_stage() -> None:
    top_level = {path.relative_to(PACKAGE).with_suffix("").parts[0] for path in _modules()} - {"__init__"}
    assert top_level <= set(STAGES), f"modules without a stage: {sorted(top_level - set(STAGES))}"


def test_the_checker_sees_a_climb() -> None:
    """A control: lazy, relative and absolute imports of later stages are all found."""
    source = "import faceprompt.cli\ndef f():\n    from ..pipelines import FacePipeline\n    from . import align\n"
    assert _imported_stages(source, ("faceprompt", "faces")) == {("cli", 1), ("pipelines", 3), ("faces", 4)}


def test_top_level_exports_are_lazy_and_real() -> None:
    import subprocess
    import sys

    code = (
        "import sys, faceprompt; assert 'diffusers' not in sys.modules; "
        "from faceprompt import FaceAnalyzer, FacePipeline, FaceResult, GenerateRequest, Identity; "
        "print(FaceAnalyzer.__module__, FacePipeline.__module__, GenerateRequest.__module__, Identity.__module__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [
        "faceprompt.faces.analyzer", "faceprompt.pipelines.face_pipeline", "faceprompt.pipelines.request",
        "faceprompt.identity",
    ]
