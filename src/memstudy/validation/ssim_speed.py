"""Side-by-side timing of the SSIM detector: the first implementation against the current one.

Both score one synthetic set against a training and a holdout set exactly as a grid cell does
(:func:`memstudy.metrics.scoring.score`: five nearest-neighbour searches), on cohort slices, in
one process, one after the other, and must give the same similarities. CPU seconds are
reported beside wall seconds, because on a shared machine the wall clock measures the
neighbours as much as the code.

    python -m memstudy.validation.ssim_speed --n-gen 600 --n-train 400 --image-size 64

cost: about a minute of CPU at the defaults (most of it the first implementation).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from ..data.cohort import make_cohort
from ..detect.ssim import SSIMDetector, pairwise_ssim_matrix
from ..metrics.scoring import score


class FirstSSIMDetector(SSIMDetector):
    """The SSIM detector as first written: every search filters every pair's product map."""

    def search(self, query, ref, k=1):
        return pairwise_ssim_matrix(query, ref, self.data_range).topk(k, dim=1)


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def compare(n_gen: int = 600, n_train: int = 400, n_holdout: int = 400,
            image_size: int = 64) -> dict:
    """Score one set with both implementations; return their times and the largest difference."""
    def slices(n, first):
        return torch.from_numpy(make_cohort(-(-n // 4), image_size, 4, seed=0,
                                            first_patient=first).images[:n])

    train, holdout, gen = slices(n_train, 0), slices(n_holdout, 10_000), slices(n_gen, 20_000)
    gen = (gen + 0.02 * torch.randn(gen.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    new, wall_new, cpu_new = _timed(lambda: score(SSIMDetector(), train, holdout, gen))
    old, wall_old, cpu_old = _timed(lambda: score(FirstSSIMDetector(), train, holdout, gen))
    diff = max(float(np.abs(getattr(new, k) - getattr(old, k)).max())
               for k in ("sim_gen_train", "sim_train_gen", "sim_holdout_train"))
    return {"n_gen": n_gen, "n_train": n_train, "n_holdout": n_holdout, "image_size": image_size,
            "threads": torch.get_num_threads(), "first_wall_s": wall_old, "first_cpu_s": cpu_old,
            "current_wall_s": wall_new, "current_cpu_s": cpu_new,
            "speedup_wall": wall_old / wall_new, "speedup_cpu": cpu_old / cpu_new,
            "max_abs_difference": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memstudy.validation.ssim_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-gen", type=int, default=600)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-holdout", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    r = compare(args.n_gen, args.n_train, args.n_holdout, args.image_size)
    print(f"SSIM detector, score() of {r['n_gen']} synthetic vs {r['n_train']} training + "
          f"{r['n_holdout']} holdout slices at {r['image_size']} px, {r['threads']} threads:")
    print(f"  first implementation : {r['first_wall_s']:7.1f} s wall, {r['first_cpu_s']:7.1f} s CPU")
    print(f"  current              : {r['current_wall_s']:7.1f} s wall, {r['current_cpu_s']:7.1f} s CPU")
    print(f"  speed-up             : {r['speedup_wall']:.1f}x wall, {r['speedup_cpu']:.1f}x CPU; "
          f"largest difference in similarity {r['max_abs_difference']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
