"""The declared dependencies agree everywhere, have no upper pin, and the tested floor is the declared one."""
from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def _reqs(lines) -> dict[str, Requirement]:
    return {Requirement(x).name.lower().replace("_", "-"): Requirement(x) for x in lines}


def test_requirements_txt_and_pyproject_agree():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = _reqs(pyproject["project"]["dependencies"])
    for name, req in _reqs(_lines(REPO / "requirements.txt")).items():
        assert name in declared, f"{name} is in requirements.txt but not in pyproject.toml"
        assert str(req.specifier) == str(declared[name].specifier), name


def test_no_upper_pins_that_would_downgrade_comfyui():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    files = [pyproject["project"]["dependencies"], _lines(REPO / "requirements.txt"),
             _lines(REPO / "requirements-standalone.txt")]
    for req in (Requirement(x) for lines in files for x in lines):
        assert not any(s.operator in ("<", "<=", "==", "~=", "!=") for s in req.specifier), str(req)


def test_floor_constraints_pin_the_declared_floors():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _reqs(project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra])
    floor = _reqs(_lines(REPO / ".ci" / "floor-constraints.txt"))
    assert {"transformers", "diffusers", "huggingface-hub", "tokenizers"} <= set(floor)
    for name, pin in floor.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{name}: the floor file holds exact pins"
        assert name in declared and declared[name].specifier.contains(spec.version), name
        lower = [Version(s.version) for s in declared[name].specifier if s.operator == ">="]
        # the pin is the declared floor's own release line (a patch release of it at most)
        assert lower and Version(spec.version).release[:2] == lower[0].release[:2], (name, spec.version, lower)
    assert Version(next(iter(floor["transformers"].specifier)).version) >= Version("4.50.3")  # ComfyUI's floor


def test_train_extra_and_requirements_train_agree():
    extra = _reqs(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"])
    assert _reqs(_lines(REPO / "requirements-train.txt")) == extra
