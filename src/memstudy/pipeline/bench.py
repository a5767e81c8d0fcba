"""``memstudy bench``: what a step, a sample, a search and a cell cost, measured side by side.

One run measures, on the machine it runs on (CPU by default, CUDA with ``--gpu``):

1. ``step``: the stock MONAI eager training step (as MONAI's tutorials write it: a CPU batch
   moved to the device, noise drawn on the device, fp32, ``loss.item()`` every step) against
   memstudy's step (``DiffusionTraining.train_step``: data resident, bf16 + channels-last +
   fused AdamW + torch.compile on CUDA, the loss read only when logged), per UNet preset, in
   images/s and as a ratio; also the pixel-space step of the same preset;
2. ``stacked``: R replicates stepped one after another against one vmap ensemble of R;
3. ``sampling``: DDIM sampling throughput (images/s, decoder included);
4. ``neighbors``: the chunked nearest-neighbour search, queries x references x dims;
5. ``cell``: one grid cell end to end and its parts (``metrics.json: profile_s``), with a cold
   cache and again with a warm one (another replicate: the shared autoencoder and the quality
   ruler are then loaded, not trained);
6. ``projection``: each packaged preset's wall time, projected from per-step costs measured
   here (sequential, one process; divide by the number of parallel jobs for a lower bound).

It writes ``bench.json`` and prints a short table. Nothing here asserts a speed: the test suite
runs ``--smoke`` to see that every part runs and prints its figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer

from ..config import RunConfig
from ..detect.contrastive import ContrastiveDetector
from ..detect.neighbors import nearest_neighbors
from ..metrics import quality
from ..models.ensemble import StackedDenoisers
from ..models.networks import build_autoencoder, build_train_scheduler, build_unet
from ..models.stage1 import Autoencoder, PixelSpace
from ..models.train import DiffusionTraining, GANTraining, resolve_device
from ..runio import write_json_atomic
from .grid import load_spec, packaged_specs

# Sizes per mode: (image px, batch, timed steps, warm-up steps, presets, R, NN sizes, cell)
MODES = {
    "smoke": dict(image_size=32, batch=4, steps=2, warmup=1, presets=("XS",), stacked=2,
                  nn=((256, 256, 32),), num_gen=4, ddim_steps=2, cell_steps=4, project=False),
    "cpu": dict(image_size=32, batch=16, steps=10, warmup=2, presets=("XS", "S", "M"), stacked=4,
                nn=((1024, 1024, 128), (4096, 4096, 128)), num_gen=64, ddim_steps=50,
                cell_steps=100, project=True),
    "gpu": dict(image_size=64, batch=32, steps=50, warmup=10, presets=("S", "M", "L"), stacked=8,
                nn=((10_000, 10_000, 128), (50_000, 50_000, 128)), num_gen=1024, ddim_steps=50,
                cell_steps=500, project=True),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _clock(device: str):
    """CPU seconds of this process on a CPU (a shared machine's other load does not count;
    with one thread it is the single-core wall time), wall seconds on a GPU."""
    return time.perf_counter if device.startswith("cuda") else time.process_time


def _seconds_per_call(fn, steps: int, warmup: int, device: str) -> float:
    """Seconds (:func:`_clock`) of one call of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    clock = _clock(device)
    tic = clock()
    for _ in range(steps):
        fn()
    _sync(device)
    return (clock() - tic) / steps


class _Latents:
    """A stand-in stage 1 whose "encoding" is a fixed set of latents: steps without an autoencoder."""

    def __init__(self, latents: torch.Tensor, downsample: int):
        self.latents, self.channels, self.downsample = latents, latents.shape[1], downsample

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.latents


def _latent_shape(cfg: RunConfig) -> tuple[int, int, int]:
    side = cfg.image_size // 2 ** (len(cfg.ae_channels) - 1)
    return cfg.latent_channels, side, side


def memstudy_step(cfg: RunConfig, device: str, workdir: Path):
    """memstudy's training step for ``cfg`` (ldm on random latents, pixel_dm, gan) as a callable."""
    images = torch.rand((max(cfg.dataset_size, cfg.batch_size), 1, cfg.image_size, cfg.image_size))
    if cfg.model == "gan":
        return GANTraining(cfg, images, device, workdir).train_step
    if cfg.model == "pixel_dm":
        return DiffusionTraining(cfg, PixelSpace(), images, device, workdir).train_step
    latents = torch.randn((len(images), *_latent_shape(cfg)))
    space = _Latents(latents.to(device), 2 ** (len(cfg.ae_channels) - 1))
    return DiffusionTraining(cfg, space, images, device, workdir).train_step


def stock_monai_step(cfg: RunConfig, device: str):
    """The training step as MONAI's generative tutorials write it, eager and fp32."""
    channels = 1 if cfg.model == "pixel_dm" else cfg.latent_channels
    shape = (1, cfg.image_size, cfg.image_size) if cfg.model == "pixel_dm" else _latent_shape(cfg)
    data = torch.randn((max(cfg.dataset_size, cfg.batch_size), *shape))  # a CPU "data loader"
    unet = build_unet(cfg, channels).to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    scheduler = build_train_scheduler(cfg)
    inferer = DiffusionInferer(scheduler)
    log = []

    def step():
        z = data[torch.randperm(len(data))[:cfg.batch_size]].to(device)
        noise = torch.randn_like(z)
        t = torch.randint(0, scheduler.num_train_timesteps, (len(z),), device=device)
        loss = F.mse_loss(inferer(inputs=z, diffusion_model=unet, noise=noise, timesteps=t).float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append(loss.item())
    return step


def bench_steps(mode: dict, device: str, workdir: Path) -> list[dict]:
    """Stock MONAI against memstudy, per preset, latent (ldm) and pixel space (pixel_dm)."""
    rows = []
    base = RunConfig(image_size=mode["image_size"], batch_size=mode["batch"],
                     dataset_size=4 * mode["batch"], device=device)
    cases = [(m, p) for p in mode["presets"] for m in ("ldm", "pixel_dm")]
    for model, preset in cases:
        cfg = base.replace(model=model, unet_preset=preset)
        stock = _seconds_per_call(stock_monai_step(cfg, device), mode["steps"], mode["warmup"], device)
        ours = _seconds_per_call(memstudy_step(cfg, device, workdir), mode["steps"], mode["warmup"], device)
        rows.append({"model": model, "preset": preset, "image_size": cfg.image_size,
                     "batch": cfg.batch_size, "stock_img_s": cfg.batch_size / stock,
                     "memstudy_img_s": cfg.batch_size / ours, "ratio": stock / ours,
                     "memstudy_ms_step": 1000 * ours})
    return rows


def bench_stacked(mode: dict, device: str) -> dict:
    """R latent UNets (preset S when measured) stepped one after another vs as one vmap ensemble."""
    r, b = mode["stacked"], mode["batch"]
    cfg = RunConfig(image_size=mode["image_size"], unet_preset=_main_preset(mode), batch_size=b)
    shape = _latent_shape(cfg)
    scheduler = build_train_scheduler(cfg)
    z = torch.randn((r, b, *shape), device=device)
    noise = torch.randn_like(z)
    t = torch.randint(0, 1000, (r, b), device=device)
    singles = [build_unet(cfg, shape[0]).to(device) for _ in range(r)]
    opts = [torch.optim.AdamW(m.parameters(), lr=cfg.lr) for m in singles]

    def one_by_one():
        for i, (m, o) in enumerate(zip(singles, opts)):
            loss = F.mse_loss(m(scheduler.add_noise(z[i], noise[i], t[i]), timesteps=t[i]), noise[i])
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    stacked = StackedDenoisers([build_unet(cfg, shape[0]) for _ in range(r)], cfg.lr, device)
    seq = _seconds_per_call(one_by_one, mode["steps"], mode["warmup"], device)
    vm = _seconds_per_call(lambda: stacked.step(z, noise, t, scheduler), mode["steps"],
                           mode["warmup"], device)
    return {"models": r, "preset": cfg.unet_preset, "batch": b, "sequential_img_s": r * b / seq,
            "stacked_img_s": r * b / vm, "ratio": seq / vm}


def bench_sampling(mode: dict, device: str, workdir: Path) -> list[dict]:
    """DDIM sampling throughput of a latent (with its decoder) and a pixel-space model."""
    rows = []
    for model in ("ldm", "pixel_dm"):
        cfg = RunConfig(model=model, image_size=mode["image_size"], unet_preset=_main_preset(mode),
                        ddim_steps=mode["ddim_steps"], device=device)
        space = (PixelSpace() if model == "pixel_dm"
                 else Autoencoder(build_autoencoder(cfg).to(device).eval(), 1.0))
        trainer = DiffusionTraining(cfg, space, torch.rand(4, 1, cfg.image_size, cfg.image_size),
                                    device, workdir)
        sec = _seconds_per_call(lambda: trainer.sample(mode["num_gen"], seed=0), 1, 1, device)
        rows.append({"model": model, "preset": cfg.unet_preset, "num_gen": mode["num_gen"],
                     "ddim_steps": cfg.ddim_steps, "img_s": mode["num_gen"] / sec, "seconds": sec})
    return rows


def _main_preset(mode: dict) -> str:
    """The preset the CPU presets use (S) when measured, else the first one."""
    return "S" if "S" in mode["presets"] else mode["presets"][0]


def bench_neighbors(mode: dict, device: str) -> list[dict]:
    """Nearest-neighbour search (Pearson, top-1) at each size, on ``device``."""
    rows = []
    for nq, nr, dim in mode["nn"]:
        q, r = torch.randn(nq, dim, device=device), torch.randn(nr, dim, device=device)
        sec = _seconds_per_call(lambda: nearest_neighbors(q, r, k=1, chunk=4096), 1, 1, device)
        rows.append({"device": device, "queries": nq, "refs": nr, "dim": dim, "seconds": sec})
    return rows


def bench_cell(mode: dict, device: str, workdir: Path) -> dict:
    """The quick preset's base cell, shortened to ``cell_steps``, cold cache then warm cache."""
    import os

    from .cell import run_cell

    base = load_spec("quick").cells()[0].config  # the star's base cell comes first
    n = mode["cell_steps"]
    cfg = base.replace(train_steps=n, checkpoints=(n // 2, n), device=device, autoencoder="shared")
    if mode is MODES["smoke"]:
        cfg = cfg.replace(ae_steps=4, encoder_steps=4, num_gen=mode["num_gen"], holdout_size=8,
                          ddim_steps=mode["ddim_steps"])
    old = {k: os.environ.get(k) for k in ("MEMSTUDY_CACHE", "MEMSTUDY_RESULTS")}
    os.environ["MEMSTUDY_CACHE"], os.environ["MEMSTUDY_RESULTS"] = str(workdir / "cache"), str(workdir)
    ruler_steps = quality.FEATURE_STEPS
    if mode is MODES["smoke"]:  # the ruler's budget is part of its cache key: a toy one here
        quality.FEATURE_STEPS = 4
    try:
        cold = run_cell(cfg, workdir / "cold", progress=False)["profile_s"]
        warm = run_cell(cfg.replace(seed=1), workdir / "warm", progress=False)["profile_s"]
    finally:
        quality.FEATURE_STEPS = ruler_steps
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return {"config": {k: cfg.to_dict()[k] for k in ("image_size", "unet_preset", "train_steps",
                                                      "checkpoints", "num_gen", "ddim_steps")},
            "cold_cache_s": cold, "warm_cache_s": warm}


def project_presets(device: str, cell: dict, workdir: Path) -> list[dict]:
    """Projected sequential wall time of each packaged preset runnable on this device.

    Per cell: train_steps x (measured step time of its model, preset, size, batch) + its
    checkpoints x (sampling, measured per image and DDIM step) + the contrastive encoder +
    stage 1 (once per key when shared) + the per-checkpoint scoring and figures measured in
    ``cell``. Rough by design: it says which preset fits which budget.
    """
    step_s, ae_s, sample_s, enc_s, out = {}, {}, {}, {}, []
    kind = "wall" if device.startswith("cuda") else "cpu"
    warm = cell["warm_cache_s"][kind]
    per_eval = max(warm.get("evaluate", 0) - warm.get("sample", 0), 0) / 2  # scoring, figures
    for name in packaged_specs():
        spec = load_spec(name)
        cells = spec.cells()
        if any(resolve_device_type(c.config.device) != device.split(":")[0] for c in cells):
            out.append({"preset": name, "cells": len(cells), "projected_min": None,
                        "note": f"cells ask for another device than {device}"})
            continue
        if any(getattr(c.config, "spatial_dims", 2) != 2 for c in cells):
            out.append({"preset": name, "cells": len(cells), "projected_min": None,
                        "note": "3D cells: not projected (2D step model only)"})
            continue
        total, shared_keys = 0.0, set()
        for c in cells:
            cfg = c.config
            key = (cfg.model, cfg.unet_preset, cfg.image_size, min(cfg.batch_size, cfg.dataset_size))
            if key not in step_s and cfg.model in ("ldm", "pixel_dm", "gan"):
                step_s[key] = _seconds_per_call(memstudy_step(cfg, device, workdir), 2, 1, device)
            if key not in sample_s and cfg.model in ("ldm", "pixel_dm"):
                small = cfg.replace(ddim_steps=2)
                space = (PixelSpace() if cfg.model == "pixel_dm"
                         else Autoencoder(build_autoencoder(cfg).to(device).eval(), 1.0))
                tr = DiffusionTraining(small, space, torch.rand(4, 1, cfg.image_size, cfg.image_size),
                                       device, workdir)
                sample_s[key] = _seconds_per_call(lambda: tr.sample(8, 0), 1, 1, device) / 16
            ae_key = (cfg.image_size, cfg.ae_channels, cfg.batch_size)
            if ae_key not in ae_s and cfg.model in ("ldm", "autoencoder"):
                ae_s[ae_key] = _ae_step_seconds(cfg, device)
            if cfg.image_size not in enc_s:
                det = ContrastiveDetector(dim=cfg.encoder_dim, steps=2, device=device)
                imgs = torch.rand(64, 1, cfg.image_size, cfg.image_size)
                enc_s[cfg.image_size] = _seconds_per_call(lambda: det.fit(imgs), 1, 1, device) / 2
            n_eval = len(cfg.eval_steps)
            total += cfg.train_steps * step_s.get(key, 0.0)
            total += n_eval * cfg.num_gen * cfg.ddim_steps * sample_s.get(key, 0.0)
            total += cfg.encoder_steps * enc_s[cfg.image_size] + n_eval * per_eval
            if cfg.model == "autoencoder" or (cfg.model == "ldm" and cfg.autoencoder == "per_cell"):
                total += cfg.ae_steps * ae_s[ae_key]
            elif cfg.model == "ldm" and (ae_key, cfg.ae_steps) not in shared_keys:
                shared_keys.add((ae_key, cfg.ae_steps))
                total += cfg.ae_steps * ae_s[ae_key]
        out.append({"preset": name, "cells": len(cells), "projected_min": total / 60,
                    "note": "sequential, 1 process"})
    return out


def resolve_device_type(name: str) -> str:
    return "cuda" if name.startswith("cuda") else ("cpu" if name == "cpu" else
                                                   resolve_device("auto").split(":")[0])


def _ae_step_seconds(cfg: RunConfig, device: str) -> float:
    model = build_autoencoder(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.ae_lr)
    x = torch.rand(cfg.batch_size, 1, cfg.image_size, cfg.image_size, device=device)

    def step():
        recon, _, _ = model(x)
        loss = F.l1_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _seconds_per_call(step, 2, 1, device)


def run_bench(mode_name: str = "cpu", out: Path | None = None, parts: tuple[str, ...] | None = None) -> dict:
    """Run the benchmark in one mode ("smoke", "cpu", "gpu"); write ``bench.json``; return it."""
    mode = MODES[mode_name]
    device = resolve_device("cuda" if mode_name == "gpu" else "cpu")
    parts = parts or ("step", "stacked", "sampling", "neighbors", "cell", "projection")
    found = {"mode": mode_name, "device": device, "torch_threads": torch.get_num_threads(),
             "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}
    with tempfile.TemporaryDirectory(prefix="memstudy-bench-") as tmp:
        work = Path(tmp)
        if "step" in parts:
            found["step"] = bench_steps(mode, device, work)
        if "stacked" in parts:
            found["stacked"] = bench_stacked(mode, device)
        if "sampling" in parts:
            found["sampling"] = bench_sampling(mode, device, work)
        if "neighbors" in parts:
            found["neighbors"] = bench_neighbors(mode, "cpu")
            if torch.cuda.is_available():
                found["neighbors"] += bench_neighbors(mode, "cuda")
        if "cell" in parts:
            found["cell"] = bench_cell(mode, device, work)
        if "projection" in parts and mode["project"] and "cell" in found:
            found["projection"] = project_presets(device, found["cell"], work)
    if out is not None:
        write_json_atomic(Path(out) / "bench.json", found)
    return found


def format_table(found: dict) -> str:
    """The benchmark as a short plain-text table (what ``memstudy bench`` prints)."""
    lines = [f"memstudy bench ({found['mode']}) on {found['device']}"
             + (f" [{found['gpu']}], wall seconds" if found.get("gpu") else
                f", {found['torch_threads']} thread(s), CPU seconds of this process")]
    for r in found.get("step", []):
        lines.append(f"step     {r['model']:8s} {r['preset']:2s} {r['image_size']}px b{r['batch']:<4d} "
                     f"stock {r['stock_img_s']:9.1f} img/s  memstudy {r['memstudy_img_s']:9.1f} img/s  "
                     f"x{r['ratio']:.2f}")
    if "stacked" in found:
        s = found["stacked"]
        lines.append(f"stacked  {s['models']} x {s['preset']} b{s['batch']}: one by one "
                     f"{s['sequential_img_s']:.1f} img/s, vmap ensemble {s['stacked_img_s']:.1f} img/s  "
                     f"x{s['ratio']:.2f}")
    for r in found.get("sampling", []):
        lines.append(f"sampling {r['model']:8s} {r['preset']:2s} {r['num_gen']} samples x "
                     f"{r['ddim_steps']} DDIM steps: {r['seconds']:.2f} s ({r['img_s']:.1f} img/s)")
    for r in found.get("neighbors", []):
        lines.append(f"nn       {r['device']:4s} {r['queries']} x {r['refs']} x {r['dim']}: "
                     f"{r['seconds'] * 1000:.1f} ms")
    if "cell" in found:
        kind = "wall" if found["device"].startswith("cuda") else "cpu"
        for which in ("cold_cache_s", "warm_cache_s"):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in found["cell"][which][kind].items())
            lines.append(f"cell     {which[:4]} cache ({kind} s): {parts}")
    for r in found.get("projection", []):
        wall = "n/a" if r["projected_min"] is None else f"{r['projected_min']:.1f} min"
        lines.append(f"preset   {r['preset']:8s} {r['cells']:4d} cells: {wall} ({r['note']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``memstudy bench [--smoke | --gpu] [--out DIR] [--only PART ...]``."""
    parser = argparse.ArgumentParser(
        prog="memstudy bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure training steps (stock MONAI vs memstudy), stacked replicates, "
        "sampling, nearest neighbours, one grid cell and its parts, and project each preset's "
        "wall time. Writes bench.json and prints a table.",
        epilog="examples:\n  memstudy bench --smoke      every part at toy sizes (about 1 min on a CPU)\n"
        "  memstudy bench              CPU sizes of the quick preset (about 5 min on 2 cores)\n"
        "  memstudy bench --gpu        64 px, presets S/M/L, 50k x 50k neighbours (needs CUDA)\n"
        "set OMP_NUM_THREADS to fix the CPU threads; compare runs only on one machine.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="toy sizes: checks that all parts run")
    size.add_argument("--gpu", action="store_true", help="GPU sizes on CUDA")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for bench.json (default .)")
    parser.add_argument("--only", nargs="+", choices=("step", "stacked", "sampling", "neighbors",
                                                      "cell", "projection"), help="parts to run")
    args = parser.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs CUDA, which this machine does not have: run without --gpu.")
    found = run_bench("smoke" if args.smoke else "gpu" if args.gpu else "cpu", args.out,
                      tuple(args.only) if args.only else None)
    print(format_table(found))
    print(f"wrote {args.out / 'bench.json'}")
    return 0
