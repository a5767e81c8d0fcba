"""The ablation grid as data: a YAML spec, its expansion into named cells, and the runner.

A spec names the RunConfig values every cell shares (``fixed``), the factors being studied
(``axes``: a list of levels per RunConfig field), how levels are combined (``design``) and
the seeds; every seed is a separate cell. Example::

    name: sweep
    description: CPU one-factor-at-a-time sweep
    design: star            # or "full" (every combination of levels)
    fixed:                  # RunConfig params shared by every cell
      image_size: 32
      train_steps: 1500
      checkpoints: 250,500,1000,1500
    axes:                   # RunConfig field -> levels
      augmentation: [none, flip_rotate, strong]
      unet_preset: [S, M]
      dataset_size: [16, 64]
    base: {augmentation: none, unet_preset: M, dataset_size: 16}   # star design only
    seeds: [0]

Training length is not an axis: one run is measured at each of its ``checkpoints``.

A ``star`` design is the base cell plus each axis varied one level at a time with the others
at base (1 + sum(levels - 1) points), which is what a CPU budget affords; ``full`` is the
cartesian product. Every cell gets a readable, stable id such as
``aug-none_size-M_n-16_seed-0`` and a fully validated :class:`RunConfig`: all cells are
validated before any runs, so a bad spec fails at once and says which cell and key.

:func:`run_grid` runs the cells (through the ablation notebook, see :mod:`memstudy.pipeline.executors`)
into ``<results>/<spec name>/<cell id>/``, skipping complete cells, so an interrupted grid is
finished by running the same command again.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, RunConfig

DESIGNS = ("full", "star")
SPEC_KEYS = ("name", "description", "design", "fixed", "axes", "base", "seeds")
# Short labels keep cell ids (= folder names) readable; other fields use their own name.
ID_LABELS = {"augmentation": "aug", "unet_preset": "size", "dataset_size": "n", "model": "model"}
# Fields that cannot be axes, and what to do instead.
NOT_AXES = {
    "seed": "list seeds under the top-level `seeds` key",
    "train_steps": "training length is not an axis: one run is measured at every step in "
                   "`fixed.checkpoints`",
    "checkpoints": "training length is not an axis: list every length in `fixed.checkpoints`",
}
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SpecError(ConfigError):
    """A grid spec is malformed or yields an invalid cell; the message says how to fix it."""


@dataclass(frozen=True)
class Cell:
    """One planned run: its id, what sets it apart (axis levels and seed) and its config."""

    id: str
    levels: dict[str, Any]
    config: RunConfig


@dataclass(frozen=True)
class GridSpec:
    """A validated grid spec (see the module docstring for the YAML format).

    Build one with :func:`load_spec` or :meth:`from_dict`; :meth:`cells` expands it.
    """

    name: str
    description: str
    design: str
    fixed: dict[str, Any]
    axes: dict[str, list]
    base: dict[str, Any]
    seeds: list[int]
    source: str = field(default="<dict>", compare=False)  # where it was read, for messages

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "GridSpec":
        """Check the structure of a spec mapping; raise :class:`SpecError` saying what to fix."""
        where = f"grid spec {source}"
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected a mapping with keys {', '.join(SPEC_KEYS)}.")
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {unknown}; valid keys are {', '.join(SPEC_KEYS)}.")
        name = data.get("name")
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            raise SpecError(f"{where}: `name` must be a folder-safe string (letters, digits, _ . -), "
                            f"got {name!r}.")
        design = data.get("design", "full")
        if design not in DESIGNS:
            raise SpecError(f"{where}: design {design!r} is not one of {', '.join(DESIGNS)}.")
        fixed = _mapping(data.get("fixed"), "fixed", where)
        axes = _mapping(data.get("axes"), "axes", where)
        base = _mapping(data.get("base"), "base", where)
        fields = RunConfig.field_names()
        for key in list(fixed) + list(axes):
            if key not in fields:
                raise SpecError(f"{where}: {key!r} is not a RunConfig field; valid fields are "
                                f"{', '.join(fields)}.")
        if "seed" in fixed:
            raise SpecError(f"{where}: `fixed.seed` is not allowed: {NOT_AXES['seed']}.")
        for key, levels in axes.items():
            if key in NOT_AXES:
                raise SpecError(f"{where}: {key!r} cannot be an axis: {NOT_AXES[key]}.")
            if key in fixed:
                raise SpecError(f"{where}: {key!r} is both in `fixed` and in `axes`; keep one.")
            if not isinstance(levels, list) or not levels:
                raise SpecError(f"{where}: axis {key!r} needs a non-empty list of levels, got {levels!r}.")
            labels = [_label(key, level, where) for level in levels]
            if len(set(labels)) < len(labels):
                raise SpecError(f"{where}: axis {key!r} lists a level twice: {levels}.")
        if design == "star":
            if set(base) != set(axes):
                raise SpecError(f"{where}: a star design needs `base` to give one level for each "
                                f"axis ({', '.join(axes)}); it gives {', '.join(base) or 'none'}.")
            for key, level in base.items():
                if level not in axes[key]:
                    raise SpecError(f"{where}: base level {key}={level!r} is not one of the axis "
                                    f"levels {axes[key]}.")
        elif base:
            raise SpecError(f"{where}: `base` only applies to design: star (this one is {design}).")
        seeds = data.get("seeds", [0])
        if (not isinstance(seeds, list) or not seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
                or len(set(seeds)) < len(seeds)):
            raise SpecError(f"{where}: `seeds` must be a non-empty list of distinct integers, "
                            f"got {seeds!r}.")
        return cls(name=name, description=str(data.get("description", "")), design=design,
                   fixed=fixed, axes=axes, base=base, seeds=seeds, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The spec as it would be written in YAML (without ``source``)."""
        out = {"name": self.name, "description": self.description, "design": self.design,
               "fixed": self.fixed, "axes": self.axes, "seeds": self.seeds}
        if self.design == "star":
            out["base"] = self.base
        return out

    def points(self) -> list[dict[str, Any]]:
        """The design points (axis -> level), before seeds, in run order."""
        if self.design == "full":
            return [dict(zip(self.axes, combo)) for combo in itertools.product(*self.axes.values())]
        points = [dict(self.base)]
        for key, levels in self.axes.items():
            points += [{**self.base, key: level} for level in levels if level != self.base[key]]
        return points

    def cells(self) -> list[Cell]:
        """Expand into cells and validate every one; raise :class:`SpecError` on the first bad one.

        Seeds form the outer loop, so a grid stopped half way has whole replicates done.
        """
        cells = []
        for seed in self.seeds:
            for point in self.points():
                levels = {**point, "seed": seed}
                cid = cell_id(levels)
                try:
                    cfg = RunConfig.from_params({**self.fixed, **levels})
                except ConfigError as err:
                    raise SpecError(f"grid spec {self.source}: cell {cid}: {err} Change that value "
                                    "under `fixed` or `axes`.") from None
                cells.append(Cell(cid, levels, cfg))
        ids = [c.id for c in cells]
        clashes = sorted({i for i in ids if ids.count(i) > 1})
        if clashes:
            raise SpecError(f"grid spec {self.source}: two cells share the id(s) {clashes}; make the "
                            "axis levels distinct.")
        return cells


def cell_id(levels: dict[str, Any]) -> str:
    """Readable, stable id of a cell, e.g. ``aug-none_size-M_n-16_seed-0``."""
    return "_".join(f"{ID_LABELS.get(k, k)}-{_label(k, v, 'cell id')}" for k, v in levels.items())


def _label(key: str, level: Any, where: str) -> str:
    """A level as it appears in an id: tuples joined with '-'; must be folder-safe."""
    text = "-".join(map(str, level)) if isinstance(level, (list, tuple)) else str(level)
    text = text.replace(",", "-").replace(" ", "")
    if not _SAFE_LABEL.match(text):
        raise SpecError(f"{where}: level {level!r} of {key!r} cannot be used in a folder name; "
                        "use letters, digits and _ . + - only.")
    return text


def _mapping(value: Any, key: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: `{key}` must be a mapping, got {value!r}.")
    return dict(value)


# ----------------------------------------------------------------------------------------
# Finding specs


def packaged_specs() -> list[str]:
    """Names of the specs shipped in ``memstudy/grids``."""
    folder = resources.files("memstudy") / "grids"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(name_or_path: str | Path) -> GridSpec:
    """Load a packaged spec by name (``quick``) or any spec by path (``my/grid.yaml``)."""
    text_path = str(name_or_path)
    if text_path.endswith((".yaml", ".yml")) or "/" in text_path or Path(text_path).is_file():
        path = Path(text_path)
        if not path.is_file():
            raise SpecError(f"grid spec file {path} does not exist.")
        text, source = path.read_text(), str(path)
    else:
        if text_path not in packaged_specs():
            raise SpecError(f"no packaged grid spec named {text_path!r}; packaged specs are "
                            f"{', '.join(packaged_specs())}, or give a path to a .yaml file.")
        text = (resources.files("memstudy") / "grids" / f"{text_path}.yaml").read_text()
        source = text_path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"grid spec {source} is not valid YAML: {err}") from None
    return GridSpec.from_dict(data, source=source)
