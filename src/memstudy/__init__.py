"""memstudy: how much do generative models of medical images memorize their training patients?

The public doors: :class:`RunConfig` (what a run is), :func:`run_cell` (one grid cell into a
run folder), and the ``memstudy`` command line (grids, reports, filters).
"""

__all__ = ["RunConfig", "ConfigError", "run_cell"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use, so that `memstudy --help` and the config module load without
    # paying for torch and MONAI.
    if name in ("RunConfig", "ConfigError"):
        from . import config

        return getattr(config, name)
    if name == "run_cell":
        from .pipeline.cell import run_cell

        return run_cell
    raise AttributeError(f"module 'memstudy' has no attribute {name!r}")
