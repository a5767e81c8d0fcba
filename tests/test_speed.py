"""No repeated work, and no lost work: the shared autoencoder cache, stage-1 resume, clean
stats after a resume, and the GPU path's CPU fallback giving the numbers it gave before."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import memstudy.models.stage1 as stage1
import memstudy.models.train as train_mod
from memstudy.config import RunConfig
from memstudy.models import accel, shared
from memstudy.models.networks import build_unet
from memstudy.runio import read_jsonl

CFG = RunConfig(ae_steps=12, train_steps=20, checkpoints=(10,), encoder_steps=5, ddim_steps=3,
                num_gen=8)


def _images(n=8, size=32, seed=0):
    return torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(seed))


def _fit(tmp_path, images, **kw):
    return stage1.fit_autoencoder(CFG, images, "cpu", out=tmp_path / "ae.pt",
                                  resume=tmp_path / "ae_last.pt", stats=tmp_path / "stats.jsonl",
                                  seed=0, augmentation="flip_rotate", progress=False, **kw)


# --- stage 1 resumes, and stats.jsonl holds each step once ---------------------------------

def test_a_killed_stage_1_resumes_to_identical_weights_without_duplicate_stats(tmp_path, monkeypatch):
    monkeypatch.setattr(stage1, "AE_SAVE_EVERY", 4)
    monkeypatch.setattr(stage1, "LOG_EVERY", 1)
    images = _images()
    whole = _fit(tmp_path / "whole", images)

    real_append = stage1.append_jsonl

    def kill_at_step_10(path, record):  # after the resume point at 8: steps 9, 10 get redone
        real_append(path, record)
        if record["step"] == 10:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(stage1, "append_jsonl", kill_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "killed", images)
    assert (tmp_path / "killed" / "ae_last.pt").exists() and not (tmp_path / "killed" / "ae.pt").exists()
    monkeypatch.setattr(stage1, "append_jsonl", real_append)
    resumed = _fit(tmp_path / "killed", images)

    for k, v in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)
    assert resumed.scale_factor == whole.scale_factor
    steps = [r["step"] for r in read_jsonl(tmp_path / "killed" / "stats.jsonl")]
    assert steps == list(range(1, 13))  # each step once, in order
    assert read_jsonl(tmp_path / "killed" / "stats.jsonl") == read_jsonl(tmp_path / "whole" / "stats.jsonl")
    assert not (tmp_path / "killed" / "ae_last.pt").exists()  # superseded by the weights


def test_a_resumed_stage_2_logs_each_step_once(tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "LOG_EVERY", 2)
    cfg = CFG.replace(model="pixel_dm", unet_preset="XS")
    images = _images()

    def trainer(run_dir):
        return train_mod.DiffusionTraining(cfg, train_mod.PixelSpace(), images, "cpu", run_dir)

    real_step = train_mod.DiffusionTraining.train_step

    def kill_at_15(self):  # after the checkpoint at 10 and the records of 12 and 14
        if self.step == 15:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self)

    monkeypatch.setattr(train_mod.DiffusionTraining, "train_step", kill_at_15)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path).run(lambda step, model: None, progress=False)
    before = [r["step"] for r in read_jsonl(tmp_path / "stats.jsonl")]
    assert before == [2, 4, 6, 8, 10, 12, 14]
    monkeypatch.setattr(train_mod.DiffusionTraining, "train_step", real_step)
    trainer(tmp_path).run(lambda step, model: None, progress=False)
    steps = [r["step"] for r in read_jsonl(tmp_path / "stats.jsonl")]
    assert steps == list(range(2, 21, 2))


def test_trim_stats_keeps_other_stages_and_earlier_steps(tmp_path):
    path = tmp_path / "stats.jsonl"
    records = [{"stage": "autoencoder", "step": 30}, {"stage": "diffusion", "step": 25},
               {"stage": "diffusion", "step": 50}, {"stage": "diffusion", "step": 75}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    stage1.trim_stats(path, "diffusion", 50)
    assert read_jsonl(path) == records[:3]


# --- the shared autoencoder: one per key, reused, never stale -------------------------------

@pytest.fixture
def cold_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMSTUDY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shared, "REFERENCE_PATIENTS", 4)  # 16 slices: seconds to generate
    return tmp_path / "cache"


def test_the_shared_autoencoder_is_reused_across_stage_2_settings_and_retrained_on_a_new_key(cold_cache, monkeypatch):
    trained = []
    real_fit = shared.fit_autoencoder
    monkeypatch.setattr(shared, "fit_autoencoder",
                        lambda cfg, images, *a, **k: (trained.append(images is not None),
                                                      real_fit(cfg, images, *a, **k))[1])
    cfg = CFG.replace(autoencoder="shared")
    ae1, path1 = shared.shared_autoencoder(cfg, "cpu", progress=False)
    # another replicate, augmentation, UNet and learning rate: stage 2 only, so the same file
    other = cfg.replace(seed=3, augmentation="strong", unet_preset="XS", lr=1e-4, train_steps=40)
    ae2, path2 = shared.shared_autoencoder(other, "cpu", progress=False)
    assert path2 == path1 and trained == [True, False]
    for k, v in ae1.model.state_dict().items():
        torch.testing.assert_close(ae2.model.state_dict()[k], v, rtol=0, atol=0)
    # a stage-1 setting is part of the key: a new file, trained
    _, path3 = shared.shared_autoencoder(cfg.replace(ae_steps=13), "cpu", progress=False)
    assert path3 != path1 and trained == [True, False, True]
    key = json.loads(path3.with_suffix(".json").read_text())
    assert key["ae_steps"] == 13 and key["augmentation"] == shared.SHARED_AUGMENTATION


def test_the_shared_autoencoder_never_saw_a_cells_patients():
    from memstudy.data.sets import load_sets, patient_split

    cfg = CFG.replace(autoencoder="shared")
    reference = set(patient_split(cfg)["reference"][:shared.REFERENCE_PATIENTS].tolist())
    for seed in range(3):
        sets = load_sets(cfg.replace(seed=seed))
        assert not reference & set(sets.train.patient_id.tolist())
        assert not reference & set(sets.holdout.patient_id.tolist())


def test_a_cell_gives_identical_results_with_a_cold_and_a_warm_cache(cold_cache, tmp_path, monkeypatch):
    from memstudy.metrics import quality
    from memstudy.pipeline.cell import run_cell

    monkeypatch.setattr(quality, "FEATURE_STEPS", 5)  # the quality ruler, also cached: cheap here
    cfg = CFG.replace(autoencoder="shared", train_steps=10, checkpoints=())
    cold = run_cell(cfg, tmp_path / "cold", progress=False)
    assert any(cold_cache.glob("autoencoder/*.pt")) and any(cold_cache.glob("fd_encoder/*.pt"))
    warm = run_cell(cfg, tmp_path / "warm", progress=False)
    assert warm["rows"] == cold["rows"]
    assert warm["autoencoder_file"] == cold["autoencoder_file"] != ""
    assert warm["profile_s"]["cpu"]["stage1"] < cold["profile_s"]["cpu"]["stage1"]  # loaded, not trained
    a, b = (np.load(tmp_path / d / "samples/step_000010.npz")["images"] for d in ("cold", "warm"))
    np.testing.assert_array_equal(a, b)


# --- the GPU path: a no-op on CPU, and a compile failure falls back to eager ----------------

def test_the_cpu_step_gives_the_numbers_of_the_plain_loop(tmp_path):
    """memstudy's step (with the GPU options, inert on a CPU) against the loop as it was
    written before them: the same seed must give bit-identical losses and weights."""
    from monai.inferers import DiffusionInferer

    cfg = CFG.replace(unet_preset="XS")
    latents = torch.randn((8, 3, 8, 8), generator=torch.Generator().manual_seed(1))

    class Identity:
        channels, downsample = 3, 4

        def encode(self, x):
            return latents

    ours = train_mod.DiffusionTraining(cfg, Identity(), torch.zeros(8, 1, 32, 32), "cpu", tmp_path)
    assert ours.step_model is ours.unet  # no compile on a CPU
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg, 3)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    inferer = DiffusionInferer(train_mod.build_train_scheduler(cfg))
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    for _ in range(3):
        z = latents[torch.randperm(8, generator=gen)[:cfg.batch_size]]
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (z.shape[0],), generator=gen)
        loss = F.mse_loss(inferer(inputs=z, diffusion_model=unet, noise=noise, timesteps=t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        assert float(ours.train_step()) == loss.item()
    for k, v in unet.state_dict().items():
        torch.testing.assert_close(ours.unet.state_dict()[k], v, rtol=0, atol=0)


def test_a_failing_compile_falls_back_to_eager():
    net = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)

    def broken_compile(module):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    with pytest.warns(RuntimeWarning, match="no compiler here"):
        wrapped = accel.CompiledOrEager(net, broken_compile)
        out = wrapped(x)
    torch.testing.assert_close(out, net(x))
    assert "no compiler here" in wrapped.fallback_reason
    assert accel.maybe_compile(net, "cpu") is net
    assert accel.fused("cpu") == {} and accel.fused("cuda") == {"fused": True}
    assert accel.channels_last(x, "cpu") is x


def test_a_stacked_ensemble_trains_each_member_as_if_alone():
    from memstudy.models.ensemble import StackedDenoisers
    from memstudy.models.networks import build_train_scheduler

    cfg = CFG.replace(unet_preset="XS")

    def member(seed):
        torch.manual_seed(seed)
        return build_unet(cfg, 3)

    stacked = StackedDenoisers([member(0), member(1)], cfg.lr, "cpu")
    alone = [member(0), member(1)]
    opts = [torch.optim.AdamW(m.parameters(), lr=cfg.lr) for m in alone]
    sched = build_train_scheduler(cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        z = torch.randn((2, 4, 3, 8, 8), generator=g)
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, 1000, (2, 4), generator=g)
        losses = stacked.step(z, noise, t, sched)
        for r, (m, o) in enumerate(zip(alone, opts)):
            loss = F.mse_loss(m(sched.add_noise(z[r], noise[r], t[r]), timesteps=t[r]), noise[r])
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()
            torch.testing.assert_close(losses[r], loss.detach(), rtol=1e-5, atol=1e-6)
