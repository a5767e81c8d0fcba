"""One frozen, typed configuration per run: every default of a grid cell lives here.

A cell of the ablation grid is fully described by a :class:`RunConfig`. Notebooks and the
command line build one with :meth:`RunConfig.from_params`, which rejects unknown keys (listing
the valid ones) and invalid values *before* any training starts. The resolved config is the
first file written to a run folder, so a crashed run still says what it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, get_type_hints

AUGMENTATIONS = ("none", "flip_rotate", "strong")
PREDICTION_TYPES = ("epsilon", "v_prediction")  # MONAI's scheduler names
AUTOENCODERS = ("shared", "per_cell")  # where ldm's stage 1 comes from (RunConfig.autoencoder)
UNET_PRESETS = ("XS", "S", "M", "L")
MODELS = ("ldm", "pixel_dm", "autoencoder", "gan",
          "control_positive", "control_negative")  # controls: see memstudy.models.controls
DETECTORS = ("contrastive", "pixel", "nn_ratio", "ssim", "external",
             "contrastive3d", "trusted")  # see memstudy.detect.factory
TRUSTED_BACKBONES = ("small", "resnet10", "resnet18")  # see memstudy.detect.trusted
# Detectors that compare whole volumes (3D cells): contrastive3d is Dar et al.'s 3D encoder; the
# others flatten their input. contrastive, ssim and external work on 2D slices only.
DETECTORS_3D = ("contrastive3d", "pixel", "nn_ratio")
MODELS_3D = ("ldm", "pixel_dm", "autoencoder", "control_positive", "control_negative")  # no 3D GAN
# The patient pool is split once, by patient, into four shares (memstudy.data.splits):
# - train: cells draw their training patients from it;
# - holdout: cells draw the held-out patients that calibrate tau and act as non-members;
# - test: patients no cell and no ruler ever sees: negative controls, planted-copy "novel" queries;
# - reference: the pool the shared rulers learn from (trusted detector encoder, shared
#   autoencoder, quality feature encoder), so a ruler never saw a cell's patients.
SPLITS = ("train", "holdout", "test", "reference")
SPLIT_FRACTIONS = (0.5, 0.2, 0.15, 0.15)
# The generated cohort can also make patients outside every pool: the trusted detector tops its
# reference share up with patients from this id on (memstudy.detect.trusted), so no cell's pool
# (ids 0 .. cohort_patients - 1) may reach it.
DETECTOR_POOL_FIRST_ID = 1_000_000
DATASETS = ("cohort", "medmnist:<flag>")  # medmnist reads $MEMSTUDY_DATA/<flag>.npz
# Local real data sets (memstudy.data.readers), read from $MEMSTUDY_DATA; "name:option" picks
# a sequence/channel where the layout has several (e.g. "brats2021:t1ce").
REAL_DATASETS = {"brats2020": ("flair", "t1", "t1ce", "t2"), "brats2021": ("flair", "t1", "t1ce", "t2"),
                 "decathlon_brain": ("flair", "t1", "t1gd", "t2"), "chest_xray": (),
                 "nih_cxr14": (), "folder": (), "medmnist": None}  # None: the option is required


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says how to fix it."""


def check_pool_size(cohort_patients: int) -> None:
    """Refuse a pool whose ids (0 .. cohort_patients - 1) reach the trusted detector's own."""
    if cohort_patients > DETECTOR_POOL_FIRST_ID:
        raise ConfigError(
            f"cohort_patients={cohort_patients} reaches the ids from {DETECTOR_POOL_FIRST_ID:,} "
            f"on, which the trusted detector learns from: use at most "
            f"{DETECTOR_POOL_FIRST_ID:,} patients.")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one cell of the study (the *what*, never the *where*).

    The defaults are the smallest run that works: a CPU smoke run of a few seconds, far too
    short to memorize. The grid presets (``memstudy/grids/*.yaml``) set real budgets.
    """

    # --- data -------------------------------------------------------------------------
    dataset: str = "cohort"  # "cohort" (embedded, generated) or "medmnist:<flag>", e.g.
    #                          "medmnist:organamnist_64" = $MEMSTUDY_DATA/organamnist_64.npz
    image_size: int = 32  # square slice size in pixels (32, 64 or 128 for the cohort)
    spatial_dims: int = 2  # 2: axial slices; 3: one image_size**3 volume per patient (cohort
    #                        only; the patients are those the same 2D cell draws)
    dataset_size: int = 8  # number of training slices the generative model sees
    slices_per_patient: int = 4  # neighbouring axial slices taken from each patient volume
    slice_spacing: float = 0.0  # distance of neighbouring slices (normalised z, range 0.7 high);
    #                             0 spreads them over the whole range (data.cohort.slice_positions)
    holdout_size: int = 16  # held-out slices (other patients) that calibrate tau
    cohort_patients: int = 600  # size of the generated patient pool that splits are drawn from
    data_seed: int = 0  # seeds the generated anatomy and the patient split (the *pool*); the
    #                     patients a cell draws from the pool's shares are chosen by `seed`

    # --- model ------------------------------------------------------------------------
    model: str = "ldm"  # family: "ldm" (AutoencoderKL + latent UNet), "pixel_dm" (UNet on
    #                     pixels), "autoencoder" (decoded latent-prior draws), "gan" (MONAI GAN)
    unet_preset: str = "S"  # latent UNet width/depth preset, see models.UNET_PRESETS
    ae_channels: tuple[int, ...] = (16, 32, 32)  # AutoencoderKL widths; 2**(len-1) = downsampling
    latent_channels: int = 3  # channels of the latent image
    ae_steps: int = 30  # autoencoder (stage 1) optimisation steps
    ae_lr: float = 1e-3  # autoencoder learning rate
    kl_weight: float = 1e-6  # weight of the KL term in the autoencoder loss
    adversarial_weight: float = 0.0  # >0 adds MONAI's PatchDiscriminator (slower, sharper)
    autoencoder: str = "per_cell"  # ldm's stage 1: "per_cell" = on this cell's training set;
    #   "shared" = once on reference-share patients, cached and reused by every cell with the same
    #   stage-1 settings (as a pretrained LDM autoencoder is; the presets use it). The default
    #   keeps older run folders' meaning. The "autoencoder" family always trains its own.

    # --- diffusion training -----------------------------------------------------------
    augmentation: str = "none"  # "none" | "flip_rotate" | "strong" (affine + intensity)
    train_steps: int = 30  # diffusion (stage 2) optimisation steps in total
    checkpoints: tuple[int, ...] = ()  # steps at which to sample + measure; () = train_steps only
    batch_size: int = 8  # images per optimisation step (capped at dataset_size by sampling)
    lr: float = 1e-3  # AdamW learning rate of the diffusion model
    ema_decay: float = 0.0  # exponential moving average of weights; 0 disables it
    num_train_timesteps: int = 1000  # DDPM noise levels
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" (the noise; DDPM and
    #                MONAI's tutorials) or "v_prediction" (Salimans & Ho 2022), which 3D needs:
    #                eps-prediction's samples of 32-cubed volumes blew up (book: three_d)
    seed: int = 0  # the replicate: seeds the patients drawn, model init, batches, augmentation
    #                and sampling, so replicates differ in patients *and* in model randomness

    # --- sampling and detection -------------------------------------------------------
    num_gen: int = 16  # synthetic samples drawn at each checkpoint
    ddim_steps: int = 10  # DDIM sampling steps
    detectors: tuple[str, ...] = ("contrastive", "pixel")  # scored at every checkpoint; also
    #                                                         nn_ratio, ssim, external
    encoder_steps: int = 30  # contrastive encoder training steps (on the training set only)
    encoder_dim: int = 128  # contrastive embedding size (Dar et al.: 128 in 2D)
    trusted_steps: int = 30  # steps of the shared trusted encoder (patients no cell draws;
    #                          cached by data set, size, data_seed and budget: cells share one)
    trusted_backbone: str = "small"  # its network: "small" CNN or a MONAI "resnet10"/"resnet18"
    tau_percentile: float = 95.0  # tau = this percentile of train->holdout max similarity
    membership: bool = True  # loss-based membership inference at each checkpoint (diffusion)
    device: str = "auto"  # "auto" = CUDA when available, else CPU
    show_patient_images: bool = False  # real data only: also draw figures showing patient
    #                                    pixels (galleries, training examples); off by default

    # ----------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "RunConfig":
        """Build a validated config from flat parameters (a notebook's or a grid cell's).

        Lists may be given as lists or as comma-separated strings ("500,1000"), because
        papermill's ``-p`` passes strings. Unknown keys raise :class:`ConfigError`.
        """
        unknown = sorted(set(params) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"Unknown config key(s) {unknown}. Valid keys are: {', '.join(cls.field_names())}."
            )
        hints = get_type_hints(cls)
        coerced = {name: _coerce(name, value, hints[name]) for name, value in params.items()}
        return cls(**coerced)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` on the first value that cannot work, saying what to do."""
        _check_dataset(self.dataset)
        _choice("model", self.model, MODELS)
        if self.spatial_dims == 3:
            self._validate_3d()
        elif self.spatial_dims != 2:
            raise ConfigError(f"spatial_dims must be 2 (slices) or 3 (volumes), got {self.spatial_dims}.")
        elif "contrastive3d" in self.detectors:
            raise ConfigError("detector 'contrastive3d' compares volumes: use it with spatial_dims=3, "
                              "or 'contrastive' for slices.")
        _choice("augmentation", self.augmentation, AUGMENTATIONS)
        _choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _choice("autoencoder", self.autoencoder, AUTOENCODERS)
        _choice("trusted_backbone", self.trusted_backbone, TRUSTED_BACKBONES)
        _choice("unet_preset", self.unet_preset, UNET_PRESETS)
        for name in self.detectors:
            _choice("detectors", name, DETECTORS)
        if not self.detectors:
            raise ConfigError("detectors is empty: name at least one of " + ", ".join(DETECTORS))
        for name in ("image_size", "dataset_size", "slices_per_patient", "holdout_size",
                     "cohort_patients", "latent_channels", "ae_steps", "train_steps",
                     "batch_size", "num_train_timesteps", "num_gen", "ddim_steps",
                     "encoder_steps", "encoder_dim", "trusted_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        check_pool_size(self.cohort_patients)
        factor = 2 ** (len(self.ae_channels) - 1)
        if self.image_size % (4 * factor):
            raise ConfigError(
                f"image_size {self.image_size} must be divisible by {4 * factor} (the autoencoder "
                f"downsamples by {factor} and the latent UNet by up to 4): try 32, 64 or 128."
            )
        if self.slice_spacing < 0 or self.slice_spacing * (self.slices_per_patient - 1) > 0.7:
            raise ConfigError(
                f"slice_spacing {self.slice_spacing} x {self.slices_per_patient - 1} gaps does not fit "
                "the 0.7-high slice range: use 0 (spread) or at most "
                f"{0.7 / max(self.slices_per_patient - 1, 1):.3f}.")
        if self.dataset_size % self.slices_per_patient:
            raise ConfigError(
                f"dataset_size {self.dataset_size} must be a multiple of slices_per_patient "
                f"{self.slices_per_patient}, because training sets are whole patients."
            )
        # Training and holdout patients come from their shares of the pool (SPLIT_FRACTIONS):
        # ask for no more patients than those shares hold.
        n_train = self.dataset_size // self.slices_per_patient
        n_holdout = -(-self.holdout_size // self.slices_per_patient)
        share = dict(zip(SPLITS, SPLIT_FRACTIONS))
        pool_needed = max(n_train / share["train"], n_holdout / share["holdout"])
        if pool_needed > self.cohort_patients:
            raise ConfigError(
                f"cohort_patients={self.cohort_patients} is too small for dataset_size="
                f"{self.dataset_size} and holdout_size={self.holdout_size} ({n_train} training and "
                f"{n_holdout} holdout patients from {share['train']:.0%} / {share['holdout']:.0%} shares): raise it to at least "
                f"{int(pool_needed) + 1}."
            )
        # The never-seen slices (every rate's null) and the negative control take two disjoint
        # sets of num_gen slices from the test share (memstudy.models.controls).
        n_unseen = 2 * -(-self.num_gen // self.slices_per_patient)
        if (self.dataset == "cohort" and self.spatial_dims == 2
                and n_unseen > int(self.cohort_patients * share["test"])):
            raise ConfigError(
                f"cohort_patients={self.cohort_patients} leaves {int(self.cohort_patients * share['test'])} "
                f"test-share patients, fewer than the {n_unseen} that num_gen={self.num_gen} needs "
                f"(never-seen slices for the null and the negative control, {self.slices_per_patient} "
                f"per patient): raise cohort_patients to at least "
                f"{int(n_unseen / share['test']) + 1} or lower num_gen.")
        bad = [c for c in self.checkpoints if not 0 < c <= self.train_steps]
        if bad:
            raise ConfigError(f"checkpoints {bad} fall outside 1..train_steps={self.train_steps}.")
        if not 0 < self.tau_percentile < 100:
            raise ConfigError(f"tau_percentile must be in (0, 100), got {self.tau_percentile}.")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")
        for name in ("lr", "ae_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")

    def _validate_3d(self) -> None:
        """What a volume cell needs: volumes to read, 3D-capable models and detectors."""
        if self.dataset != "cohort":
            raise ConfigError(f"spatial_dims=3 needs volumes: only dataset='cohort' provides them "
                              f"(got {self.dataset!r}); use spatial_dims=2 for {self.dataset!r}.")
        if self.model not in MODELS_3D:
            raise ConfigError(f"model={self.model!r} has no 3D version; with spatial_dims=3 use one of "
                              f"{', '.join(MODELS_3D)}.")
        flat = [d for d in self.detectors if d in DETECTORS and d not in DETECTORS_3D]
        if flat:
            raise ConfigError(f"detectors {flat} compare 2D slices; with spatial_dims=3 use "
                              f"{', '.join(DETECTORS_3D)} (contrastive3d is Dar et al.'s 3D encoder).")
        if self.image_size > 64:
            raise ConfigError(f"image_size={self.image_size} means {self.image_size}**3 volumes: too "
                              "large for these models on one machine; use 32 (CPU) or 64 (GPU).")
        if self.adversarial_weight > 0:  # stage 1's PatchDiscriminator is built 2D
            raise ConfigError("adversarial_weight > 0 has no 3D discriminator yet; with "
                              "spatial_dims=3 set adversarial_weight=0.")

    # ----------------------------------------------------------------------------------
    @property
    def may_show_patient_images(self) -> bool:
        """Figures of training/holdout pixels are drawn for the generated cohort, and for real
        data only when ``show_patient_images`` opts in (a published book must not leak them)."""
        return self.dataset == "cohort" or self.show_patient_images

    @property
    def loads_shared_stage1(self) -> bool:
        """Whether the cell loads the cached shared autoencoder (``autoencoder: shared``); the
        GAN and the pixel model have no stage 1, and the autoencoder family is its own."""
        return self.autoencoder == "shared" and self.model not in ("gan", "pixel_dm", "autoencoder")

    @property
    def eval_steps(self) -> tuple[int, ...]:
        """Sorted training lengths at which the model is sampled and measured."""
        if self.model in ("autoencoder", "control_positive", "control_negative"):
            # measured once, at the end of stage 1
            return (self.ae_steps,)
        return tuple(sorted(set(self.checkpoints) | {self.train_steps}))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_params(json.loads(text))

    def digest(self) -> str:
        """Short content hash: two configs with the same digest are the same experiment."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:10]

    def replace(self, **changes: Any) -> "RunConfig":
        return RunConfig.from_params({**self.to_dict(), **changes})


def _check_dataset(dataset: str) -> None:
    """``cohort``, ``medmnist:<flag>`` or a local layout, with a valid option if any."""
    name, sep, option = dataset.partition(":")
    options = REAL_DATASETS.get(name, ())
    valid = (dataset == "cohort" or (name in REAL_DATASETS and (
        (options is None and option) or (options is not None and (not sep or option in options)))))
    if not valid:
        forms = ", ".join([*DATASETS, *(f"{n}[:{'|'.join(o)}]" if o else n
                                        for n, o in REAL_DATASETS.items() if o is not None)])
        raise ConfigError(f"dataset={dataset!r} is not one of {forms} (e.g. 'brats2021', "
                          "'medmnist:organamnist_64' for $MEMSTUDY_DATA/organamnist_64.npz).")


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, valid))}.")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn papermill/YAML/JSON values into the field's declared type, or explain why not."""
    origin = getattr(hint, "__origin__", None)
    try:
        if origin is tuple:
            item_type = hint.__args__[0]
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            return tuple(item_type(v) for v in value)
        if hint is bool:
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("not a whole number")
        return hint(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}={value!r} cannot be read as {hint}: {err}") from None
