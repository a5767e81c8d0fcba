"""What the sampling budget costs and what it changes: DDIM steps and samples per checkpoint.

Run on a finished diffusion cell (its last checkpoint is reloaded, nothing is retrained)::

    python -m memstudy.pipeline.budget results/quick/<base cell>    # a few CPU minutes

For DDIM steps 10 / 25 / 50 / 100 it draws the checkpoint's synthetic set again (same noise
seed) and prints the CPU seconds and every detector's copy and memorized rates; then, from one
set of 256 samples, the rates and a 95 % exact binomial interval of the copy rate (the study's one interval for a proportion) for the first 32 / 64
/ 128 / 256 samples. The book's CPU-regime chapter quotes its output for the quick preset.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..data.sets import load_sets
from ..detect.factory import make_detector
from ..metrics.intervals import binomial_interval
from ..metrics.scoring import score
from ..models.stage1 import fit_autoencoder
from ..models.train import DiffusionTraining, PixelSpace

DDIM_STEPS = (10, 25, 50, 100)
NUM_GEN = (32, 64, 128, 256)


def load_trainer(run_dir: Path) -> tuple[RunConfig, DiffusionTraining]:
    """The diffusion model of a finished cell at its last checkpoint, on the CPU."""
    cfg = RunConfig.from_json((run_dir / "config.json").read_text())
    if cfg.model not in ("ldm", "pixel_dm"):
        raise SystemExit(f"{run_dir} is a {cfg.model!r} cell: the sampling budget concerns diffusion cells.")
    train, _ = load_sets(cfg).tensors()
    if cfg.model == "pixel_dm":
        space = PixelSpace()
    else:  # the weights the cell used: its own, or the shared file its metrics.json names
        metrics = json.loads((run_dir / "metrics.json").read_text())
        ae_file = Path(metrics.get("autoencoder_file") or run_dir / "autoencoder.pt")
        space = fit_autoencoder(cfg, None, "cpu", out=ae_file, resume=ae_file.with_suffix(".none"),
                                stats=ae_file.with_suffix(".none"), seed=0, augmentation="none")
    trainer = DiffusionTraining(cfg.replace(device="cpu"), space, train, "cpu", run_dir)
    trainer.try_resume()
    trainer.train(False)
    return cfg, trainer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    run_dir = Path(argv[0])
    cfg, trainer = load_trainer(run_dir)
    sets = load_sets(cfg)
    train, holdout = sets.tensors()
    detectors = [make_detector(name, dim=cfg.encoder_dim, steps=cfg.encoder_steps, seed=cfg.seed,
                               cache_dir=run_dir).fit(train) for name in cfg.detectors]
    seed = cfg.seed * 1_000_003 + trainer.step  # the cell's own noise for this checkpoint
    print(f"{run_dir.name}: step {trainer.step}, {torch.get_num_threads()} thread(s), CPU seconds")
    for ddim in DDIM_STEPS:
        trainer.cfg = cfg.replace(ddim_steps=ddim, device="cpu")
        tic = time.process_time()
        gen = trainer.sample(cfg.num_gen, seed=seed)
        sec = time.process_time() - tic
        rates = [score(d, train, holdout, gen, cfg.tau_percentile).result for d in detectors]
        print(f"ddim_steps {ddim:3d}: {cfg.num_gen} samples in {sec:6.1f} s | " + " | ".join(
            f"{d.name} copy {r.copy_rate:.0%} mem {r.mem_rate:.0%}" for d, r in zip(detectors, rates)))
    trainer.cfg = cfg.replace(device="cpu")
    gen = trainer.sample(max(NUM_GEN), seed=seed + 1)
    for n in NUM_GEN:
        parts = []
        for d in detectors:
            r = score(d, train, holdout, gen[:n], cfg.tau_percentile).result
            lo, hi = binomial_interval(round(r.copy_rate * n), n)
            parts.append(f"{d.name} copy {r.copy_rate:.0%} [{lo:.0%}, {hi:.0%}] mem {r.mem_rate:.0%}")
        print(f"num_gen {n:3d}: " + " | ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
