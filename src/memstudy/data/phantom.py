"""How one generated patient looks: anatomy, contrast and scanner.

A patient is a small set of random anatomical parameters (:func:`draw_patient`);
the anatomy is a set of implicit functions of normalised coordinates
``(x, y, z)`` in ``[-1, 1]^3``:

* the head is a perturbed ellipsoid, given by an (approximate) signed
  distance; scalp, skull, the CSF rim and the brain surface are offsets of it;
* the cortex folds along "sulcal sheets", the zero set of a folding field
  that mixes a radial pattern (sulci run inwards from the surface), bent by
  smooth 3D noise, with more smooth 3D noise; gray matter is every point of
  the brain within a few millimetres of CSF, the rest is white matter;
* ventricles, deep gray nuclei, the interhemispheric fissure with the falx,
  the Sylvian fissures and an optional lesion are simple shapes whose size
  changes with the height ``z``;
* the scanner adds a smooth bias field, a contrast curve, some blur and
  Rician noise.

Smooth 3D noise is a sum of a few random plane waves (random Fourier
features). A plane wave factorises over the image axes, so the noise on a
stack of axial planes is one small matrix product: nothing is ever built as a
full 3D volume unless :func:`make_volume` is asked for one.

Conventions
-----------
Images are ``(H, W)`` with the patient's anterior at the top and the
patient's right on the image's left (radiological convention). ``x`` grows
to the image's right, ``y`` to the top, ``z`` from inferior to superior; a
pixel centre sits at ``-1 + (2 i + 1) / n``. Contrast is T2-weighted-like:
CSF bright, gray matter brighter than white matter, bone dark, lesions
bright.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["CONTRASTS", "Z_RANGE", "draw_patient", "lesion_on_slice", "pixel_centres", "render", "single_threaded_blas"]

#: Heights (normalised z) of the lowest and highest slice of each patient:
#: from the basal ganglia to just above the lateral ventricles.
Z_RANGE = (-0.3, 0.4)

#: Mean tissue intensities before scanner effects (T2-weighted-like:
#: CSF bright, gray matter brighter than white matter, scalp fat bright,
#: bone and dura dark, lesions bright with a darker core).
_TISSUE = {
    "scalp": 0.62,
    "skull": 0.05,
    "csf": 0.92,
    "gray": 0.55,
    "white": 0.37,
    "deep_gray": 0.45,
    "falx": 0.12,
    "lesion_rim": 0.82,
    "lesion_core": 0.5,
    "edema": 0.62,
}


# --------------------------------------------------------------------------
# Smooth random 3D fields
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Waves:
    """A smooth random 3D field, ``f(p) = Re sum_k c_k exp(i k . p)``.

    Wave vectors live in the patient's anatomical frame, so the field moves
    with the head. With ``|c_k| = sqrt(2 / K)`` the field has unit variance.
    """

    k: np.ndarray  # (K, 3) wave vectors (radians per normalised unit)
    coef: np.ndarray  # (K,) complex amplitudes


def _random_waves(rng, n, k_min, k_max, z_scale=1.0) -> _Waves:
    """Draw ``n`` plane waves with random directions and ``|k|`` in a band.

    ``z_scale < 1`` stretches the field along z, which keeps neighbouring
    axial slices alike while each slice still has detail.
    """
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * rng.uniform(k_min, k_max, size=(n, 1))
    k[:, 2] *= z_scale
    phase = rng.uniform(0.0, 2.0 * np.pi, size=n)
    return _Waves(k=k, coef=np.sqrt(2.0 / n) * np.exp(1j * phase))


@dataclass(frozen=True)
class _Grid:
    """Pixel coordinates of a stack of axial planes of one patient."""

    x: np.ndarray  # (W,) image x of the pixel columns
    y: np.ndarray  # (H,) image y of the pixel rows (top row = +1 side)
    z: np.ndarray  # (S,) height of each plane
    angle: float  # in-plane rotation of the head (radians)
    centre: tuple  # (cx, cy) position of the head centre in the image
    xa: np.ndarray  # (H, W) anatomical x (patient's left-right)
    ya: np.ndarray  # (H, W) anatomical y (posterior -> anterior)
    zz: np.ndarray  # (S, 1, 1) plane heights, ready to broadcast
    pixel: float  # pixel size in normalised units, for anti-aliasing

    @property
    def shape(self) -> tuple:
        return (len(self.z), len(self.y), len(self.x))

    def planes(self, keep) -> "_Grid":
        """The same grid restricted to some planes (a boolean mask over z)."""
        return replace(self, z=self.z[keep], zz=self.zz[keep])


def pixel_centres(n: int) -> np.ndarray:
    """Centres of ``n`` pixels spanning ``[-1, 1]``."""
    return (-1.0 + (2.0 * np.arange(n) + 1.0) / n).astype(np.float32)


def _make_grid(image_size, z, angle, centre) -> _Grid:
    """Lay out the planes and express every pixel in the head's frame."""
    x = pixel_centres(image_size)
    y = pixel_centres(image_size)[::-1].copy()  # row 0 is the top of the image
    cos, sin = math.cos(angle), math.sin(angle)
    dx = x[None, :] - centre[0]
    dy = y[:, None] - centre[1]
    xa = (cos * dx + sin * dy).astype(np.float32)
    ya = (-sin * dx + cos * dy).astype(np.float32)
    z = np.asarray(z, dtype=np.float32)
    return _Grid(x, y, z, angle, centre, xa, ya, z[:, None, None], 2.0 / image_size)


def _evaluate(waves: _Waves, grid: _Grid, gradient: bool = False):
    """Evaluate a wave field on all planes of ``grid`` at once.

    A plane wave factorises over the image axes,
    ``exp(i k.p) = exp(i kz z) exp(i ky y) exp(i kx x)``, so instead of
    ``K * S * H * W`` cosines we take ``K * (S + H + W)`` of them and sum
    over the K waves with one real matrix product per call.

    Returns
    -------
    np.ndarray or tuple of np.ndarray
        The field, shape ``(S, H, W)`` float32; with ``gradient=True`` also
        its derivatives along the anatomical x and y axes.
    """
    kx, ky, kz = waves.k.T
    # The head is rotated and shifted in the image: k'.p' = (R^T k').(p - c).
    cos, sin = math.cos(grid.angle), math.sin(grid.angle)
    kix, kiy = cos * kx - sin * ky, sin * kx + cos * ky
    coef = waves.coef * np.exp(-1j * (kix * grid.centre[0] + kiy * grid.centre[1]))
    # d/dx of exp(i k.p) is i kx exp(i k.p): derivatives only change the weights.
    rows = np.stack([coef, 1j * kx * coef, 1j * ky * coef] if gradient else [coef])

    along_z = np.exp(1j * kz[None, :] * grid.z[:, None])  # (S, K)
    along_y = np.exp(1j * kiy[None, :] * grid.y[:, None])  # (H, K)
    # Everything but the x factor: (rows * S, H, K), complex.
    partial = (rows[:, None, None, :] * along_z[None, :, None, :] * along_y[None, None, :, :])
    partial = partial.astype(np.complex64).reshape(-1, len(kx))
    # Re(a exp(i kx x)) = Re(a) cos(kx x) - Im(a) sin(kx x): one real product.
    phase_x = kix[:, None] * grid.x[None, :]  # (K, W)
    lhs = np.concatenate([partial.real, -partial.imag], axis=1)
    rhs = np.concatenate([np.cos(phase_x), np.sin(phase_x)]).astype(np.float32)
    values = (lhs @ rhs).reshape(len(rows), len(grid.z), len(grid.y), len(grid.x))
    return tuple(values) if gradient else values[0]


# --------------------------------------------------------------------------
# Small geometry helpers (all distances are in normalised units)
# --------------------------------------------------------------------------


def _coverage(signed_distance, pixel):
    """Fraction of a pixel inside a shape, from the signed distance to it.

    A linear ramp ``pixel`` wide: cheap anti-aliasing that also mimics the
    partial-volume effect of a real scanner (a thin sulcus shows as a faint
    line rather than disappearing).
    """
    return np.clip(0.5 - signed_distance / pixel, 0.0, 1.0)


def _ellipsoid_sdf(grid, centre, radii, angle=0.0):
    """Approximate in-plane signed distance to an ellipsoid.

    Uses the first-order estimate ``(rho - 1) / |grad rho|`` of the
    normalised radius ``rho``: exact on the surface, good near it, which is
    where it matters for drawing. Returns ``(S, H, W)``.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy = grid.xa - centre[0], grid.ya - centre[1]
    u = (cos * dx + sin * dy) / radii[0]
    v = (-sin * dx + cos * dy) / radii[1]
    w = (grid.zz - centre[2]) / radii[2]
    rho = np.sqrt(u * u + v * v + w * w) + 1e-6
    slope = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2) / rho + 1e-6
    return (rho - 1.0) / slope


def _segment_distance(grid, p, q):
    """In-plane distance from every pixel to the segment ``p``-``q``."""
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    t = ((grid.xa - px) * dx + (grid.ya - py) * dy) / (dx * dx + dy * dy)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(grid.xa - (px + t * dx), grid.ya - (py + t * dy))


def _bump(z, centre, half_width):
    """A smooth dome in z: 1 at ``centre``, 0 beyond ``half_width``."""
    return np.sqrt(np.clip(1.0 - ((z - centre) / half_width) ** 2, 0.0, 1.0))


# --------------------------------------------------------------------------
# Patient parameters
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
    """Outer shape of the head and the thickness of its layers."""

    angle: float  # in-plane rotation (radians)
    centre: tuple  # position in the image
    a: float  # lateral semi-axis at the widest level
    b: float  # antero-posterior semi-axis
    c: float  # vertical semi-axis
    z0: float  # height of the widest level
    egg: float  # the forehead is narrower than the back of the head
    harmonics: tuple  # (amplitude, phase) of the angular modes 2..5
    scalp: float
    skull: float
    marrow: float  # brightness of the fatty marrow (diploe) inside the skull
    csf: float  # mean width of the CSF rim around the brain
    rim: _Waves  # makes the CSF rim uneven


@dataclass(frozen=True)
class _Cortex:
    """Folding of the cortex and the CSF clefts lined by gray matter."""

    n_sulci: int  # sulci around the brain (even)
    warp: _Waves  # bends the sulci, patient-specific
    warp_amp: float
    folds: tuple  # isotropic part of the folding pattern, one _Waves per hemisphere
    radial: float  # share of the radial part in the folding pattern
    lobulation: float  # bulging of the gyral crowns
    depth: _Waves  # some sulci are deep, some shallow
    sulcal_depth: float
    sulcal_width: float
    gray: float  # cortical thickness
    fissure_width: float
    fissure_bend: tuple  # (amplitude, frequency, phase) of the midline's wiggle
    callosum: tuple  # (centre y, half length) of the corpus callosum
    sylvian_width: float


@dataclass(frozen=True)
class _Deep:
    """Ventricles and deep gray nuclei (one side; the other is its mirror)."""

    size: float  # overall scale of the ventricles (grows with atrophy)
    lift: float  # vertical shift of the ventricular system
    gap: float  # distance of the ventricles from the midline
    bow: tuple  # how far the frontal and the occipital horns spread apart
    y0: float  # antero-posterior centre of the ventricles
    length: float  # their antero-posterior half length
    width: float  # their largest half width
    third: float  # half width of the third ventricle
    nuclei: tuple  # ((centre, radii, angle), ...) caudate, thalamus, lentiform


@dataclass(frozen=True)
class _Lesion:
    """A focal lesion: bright rim (or bright blob), dark-ish core, edema."""

    present: bool
    centre: tuple  # (x, y, z) anatomical
    radius: float  # in-plane radius at its widest
    aspect: float
    angle: float
    half_height: float  # vertical half extent
    ring: bool  # ring with a dark core (tumour-like) or solid blob (plaque-like)
    shape: _Waves  # irregular outline


@dataclass(frozen=True)
class _Scanner:
    """Acquisition effects, one setting per patient."""

    tissue: dict  # tissue intensities after a per-patient jitter
    texture: _Waves
    texture_amp: float
    bias: _Waves
    bias_amp: float
    gain: float
    gamma: float
    blur: float  # point spread, 0 (sharp) to 1
    noise: float  # standard deviation of the complex noise


@dataclass(frozen=True)
class _Patient:
    head: _Head
    cortex: _Cortex
    deep: _Deep
    lesion: _Lesion
    scanner: _Scanner


#: Other sequences' tables, for asking whether a ruler learned on one contrast carries to
#: another (the planted-copy benchmark's ``--contrast``): T1-weighted-like (CSF dark, white
#: matter brighter than gray, lesions dark) and FLAIR-like (T2 with the CSF suppressed).
_TABLES = {
    "t2": _TISSUE,
    "t1": {**_TISSUE, "scalp": 0.85, "csf": 0.12, "gray": 0.45, "white": 0.68, "deep_gray": 0.5,
           "falx": 0.1, "lesion_rim": 0.3, "lesion_core": 0.2, "edema": 0.35},
    "flair": {**_TISSUE, "scalp": 0.7, "csf": 0.08, "gray": 0.62, "white": 0.45,
              "deep_gray": 0.55, "lesion_rim": 0.9, "lesion_core": 0.7, "edema": 0.8},
}
#: Contrasts a patient can be rendered in: a named table, or ``random``, a table of its own
#: (every tissue's mean drawn uniformly), for rulers that must not depend on one contrast.
CONTRASTS = (*_TABLES, "random")


def draw_patient(patient: int, seed: int, lesion_fraction: float,
                 contrast: str = "t2") -> _Patient:
    """Draw all random parameters of one patient.

    The generator is seeded by ``(seed, patient)`` only, so a patient is the
    same whichever cohort it is generated in. The draws come in a fixed
    order and the lesion is drawn last and always (``lesion_fraction`` only
    decides whether it is shown), so changing the fraction never changes
    anyone's anatomy. ``contrast="random"`` draws the tissue means from a
    stream of their own, so it changes the look and never the anatomy.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    if seed < 0 or patient < 0:
        raise ValueError(f"seed and patient must be >= 0, got seed={seed}, patient={patient}")
    rng = np.random.default_rng([seed, patient])
    u = rng.uniform

    # One "age" drives the atrophy signs together: wide sulci, large ventricles.
    atrophy = rng.beta(2.0, 3.0)
    size = u(0.86, 1.06)  # head size
    b = 0.84 * size
    head = _Head(
        angle=float(np.clip(rng.normal(0.0, 0.1), -0.25, 0.25)),
        centre=(u(-0.06, 0.06), u(-0.05, 0.04)),
        a=b * u(0.76, 0.86),
        b=b,
        c=u(0.9, 1.05),
        z0=u(-0.05, 0.08),
        egg=u(0.02, 0.09),
        harmonics=tuple((rng.normal(0.0, 0.012), u(0, 2 * np.pi)) for _ in range(4)),
        scalp=u(0.035, 0.055) * size,
        skull=u(0.035, 0.05) * size,
        marrow=u(0.0, 0.4),
        csf=(0.012 + 0.025 * atrophy) * size,
        rim=_random_waves(rng, 8, 2.0, 5.0, z_scale=0.5),
    )
    cortex = _Cortex(
        n_sulci=2 * int(rng.integers(9, 14)),
        warp=_random_waves(rng, 16, 4.0, 10.0, z_scale=0.4),
        warp_amp=u(1.2, 1.8),
        folds=tuple(_random_waves(rng, 20, 14.0, 20.0, z_scale=0.3) for _ in "LR"),
        radial=u(0.45, 0.6),
        lobulation=u(0.004, 0.01) * size,
        depth=_random_waves(rng, 12, 6.0, 12.0, z_scale=0.4),
        sulcal_depth=u(0.16, 0.24) * size,
        sulcal_width=(0.006 + 0.014 * atrophy) * size,
        gray=u(0.042, 0.055) * size,
        fissure_width=(0.005 + 0.01 * atrophy) * size,
        fissure_bend=(u(0.0, 0.012), u(2.0, 5.0), u(0, 2 * np.pi)),
        callosum=(u(-0.05, 0.03) * size, u(0.30, 0.38) * size),
        sylvian_width=(0.006 + 0.012 * atrophy) * size,
    )

    def jitter(x, y, z, scale=0.015):
        return (x + rng.normal(0, scale), y + rng.normal(0, scale), z + rng.normal(0, scale))

    nuclei = (
        # (centre, radii, angle): positions of one (the left) side, scaled by head size
        (jitter(0.13, 0.19, -0.02), (0.055, 0.085, 0.22), 0.0),  # caudate head
        (jitter(0.10, -0.10, -0.14), (0.085, 0.13, 0.15), 0.1),  # thalamus
        (jitter(0.25, 0.03, -0.13), (0.055, 0.15, 0.13), -0.25),  # lentiform nucleus
    )
    nuclei = tuple(
        (tuple(size * v for v in c), tuple(size * v for v in r), ang) for c, r, ang in nuclei
    )
    deep = _Deep(
        size=(0.7 + 0.8 * atrophy) * u(0.85, 1.15),
        lift=u(-0.04, 0.04),
        gap=u(0.03, 0.05) * size,
        bow=(u(0.06, 0.14) * size, u(0.12, 0.22) * size),
        y0=u(0.0, 0.05) * size,
        length=u(0.30, 0.38) * size,
        width=u(0.05, 0.07) * size,
        third=(0.006 + 0.014 * atrophy) * size,
        nuclei=nuclei,
    )

    table = _TABLES.get(contrast, _TISSUE)  # same keys, same order: the same draws follow
    tissue = {name: value + rng.normal(0.0, 0.035) for name, value in table.items()}
    if contrast == "random":  # another sequence, another scanner: any order of the tissues
        own = np.random.default_rng([seed, patient, 2])
        tissue = {name: float(own.uniform(0.05, 0.95)) for name in _TISSUE}
    scanner = _Scanner(
        tissue=tissue,
        texture=_random_waves(rng, 24, 18.0, 40.0),
        texture_amp=u(0.02, 0.05),
        bias=_random_waves(rng, 6, 0.8, 2.5),
        bias_amp=u(0.05, 0.2),
        gain=u(0.85, 1.12),
        gamma=u(0.8, 1.3),
        blur=u(0.0, 0.8),
        noise=u(0.01, 0.04),
    )

    # Lesion: in the white matter between ventricles and cortex, within the
    # sliced heights.
    present = rng.uniform() < lesion_fraction
    lz = u(Z_RANGE[0] + 0.02, Z_RANGE[1] - 0.02)
    r, t = u(0.35, 0.7), u(0.0, 2 * np.pi)
    lesion = _Lesion(
        present=bool(present),
        centre=(r * math.cos(t) * 0.55 * size, r * math.sin(t) * 0.68 * size, lz),
        radius=u(0.06, 0.13) * size,
        aspect=u(0.7, 1.0),
        angle=u(0.0, np.pi),
        half_height=u(0.16, 0.30),
        ring=bool(rng.uniform() < 0.5),
        shape=_random_waves(rng, 8, 8.0, 16.0),
    )
    return _Patient(head, cortex, deep, lesion, scanner)


# --------------------------------------------------------------------------
# Anatomy as signed distances on the requested planes
# --------------------------------------------------------------------------


def _head_distance(head: _Head, grid: _Grid) -> np.ndarray:
    """Approximate signed distance to the skin (negative inside); ``(S, H, W)``."""
    # Cross-sections of an ellipsoid shrink away from its widest level.
    shrink = np.sqrt(np.clip(1.0 - ((grid.zz - head.z0) / head.c) ** 2, 1e-4, 1.0))
    a = head.a * shrink * (1.0 - head.egg * grid.ya / head.b)
    b = head.b * shrink
    theta = np.arctan2(grid.ya, grid.xa)
    # Low-order angular harmonics make the outline irregular, not a perfect ellipse.
    outline = 1.0
    for mode, (amp, phase) in enumerate(head.harmonics, start=2):
        outline = outline + amp * np.cos(mode * theta + phase)
    rho = np.sqrt((grid.xa / a) ** 2 + (grid.ya / b) ** 2) + 1e-6
    slope = np.sqrt((grid.xa / a**2) ** 2 + (grid.ya / b**2) ** 2) / rho + 1e-6
    return (rho - outline) / slope


def _cortical_csf_distance(p: _Patient, grid: _Grid, depth: np.ndarray):
    """Signed distance to the nearest CSF outside the ventricles.

    CSF lies outside the brain, in the sulci, in the interhemispheric fissure
    and in the Sylvian fissures. Gray matter is then simply "tissue within
    ``gray`` of this CSF", which makes the cortex follow every fold.

    Parameters
    ----------
    depth : np.ndarray
        Depth below the brain surface (negative outside the brain).

    Returns
    -------
    distance : np.ndarray
        ``(S, H, W)``, negative inside CSF.
    midline : np.ndarray
        Distance to the midline plane, for drawing the falx.
    falx_cut : np.ndarray
        Negative where the fissure (and so the falx) exists.
    """
    cx = p.cortex
    # Interhemispheric fissure, interrupted by the corpus callosum at mid heights.
    amp, freq, phase = cx.fissure_bend
    across = grid.xa - amp * np.sin(freq * grid.ya + phase)  # signed, from the midline
    midline = np.abs(across)
    cc_y, cc_half = cx.callosum
    falx_cut = cc_half * _bump(grid.zz, 0.0, 0.38) - np.abs(grid.ya - cc_y)
    fissure = np.maximum(midline - cx.fissure_width, falx_cut)
    # Depth below the nearest surface of the hemisphere, lateral or medial:
    # sulci open onto both. `lateral` is 1 where the lateral surface is the
    # nearer one, 0 where the medial surface is.
    lateral = np.clip((fissure - depth) / 0.1 + 0.5, 0.0, 1.0)
    depth = np.minimum(depth, fissure)

    # Sulci are the zero set of a folding field f = a * sin(phi) + b * noise.
    # phi = n / 2 * theta + warp puts n sulci around the brain running
    # inwards from the surface (the smooth 3D warp bends them differently in
    # every patient, and slowly with height); the isotropic noise lets them
    # curve, branch and run along the surface in places, as real sulci cut by
    # an axial plane do. Each hemisphere has its own noise, so that no
    # sulcus crosses the midline.
    r = np.sqrt(grid.xa**2 + grid.ya**2) + 1e-3
    theta = np.arctan2(grid.ya, grid.xa)
    warp, warp_dx, warp_dy = _evaluate(cx.warp, grid, gradient=True)
    half_n = cx.n_sulci / 2
    phi = half_n * theta + cx.warp_amp * warp
    phi_x = -half_n * grid.ya / r**2 + cx.warp_amp * warp_dx
    phi_y = half_n * grid.xa / r**2 + cx.warp_amp * warp_dy
    left = across > 0
    noise, noise_dx, noise_dy = (
        np.where(left, on_left, on_right)
        for on_left, on_right in zip(*(_evaluate(w, grid, gradient=True) for w in cx.folds))
    )
    # Radial sulci belong to the lateral surface. Sulci of the medial
    # surface run across the fissure instead: level sets of ``y`` (bent by
    # the same warp), sparser than on the convexity.
    spacing = 1.6 * 2 * np.pi * 0.6 / cx.n_sulci
    psi = np.pi / spacing * grid.ya + cx.warp_amp * warp
    psi_x = cx.warp_amp * warp_dx
    psi_y = np.pi / spacing + cx.warp_amp * warp_dy
    a, m, b = cx.radial * lateral, cx.radial * (1.0 - lateral), 1.0 - cx.radial
    fold = a * np.sin(phi) + m * np.sin(psi) + b * noise
    fold_x = a * np.cos(phi) * phi_x + m * np.cos(psi) * psi_x + b * noise_dx
    fold_y = a * np.cos(phi) * phi_y + m * np.cos(psi) * psi_y + b * noise_dy
    # First-order distance to the zero set.
    to_sheet = np.abs(fold) / (np.sqrt(fold_x**2 + fold_y**2) + 1e-3)

    # Gyral crowns bulge a little, sulcal mouths dip: a lobulated brain surface.
    depth = depth - cx.lobulation * np.tanh(3 * fold) * np.sign(fold)
    # Each sulcus has its own depth; they are widest at the surface and
    # close up at their fundus.
    reach = cx.sulcal_depth * (0.6 + 0.5 * np.tanh(1.5 * _evaluate(cx.depth, grid)))
    reach = reach * (0.25 + 0.75 * lateral)  # medial sulci are shallower
    taper = np.clip(1.0 - depth / reach, 0.0, 1.0)
    sulci = np.maximum(to_sheet - cx.sulcal_width * (0.25 + 0.75 * taper), depth - reach)

    # Sylvian fissures, at the lower heights only: a bent cleft from the
    # insula out to the lateral surface, running forwards. Shifting the
    # coordinates by the warp field bends it a little more.
    present = _bump(grid.z, -0.2, 0.3)
    keep = present > 0
    sylvian = np.full(grid.shape, np.inf, dtype=np.float32)
    if keep.any():
        scale = p.head.b / 0.84
        sub = replace(
            grid.planes(keep), xa=grid.xa + 0.025 * warp[keep], ya=grid.ya + 0.004 * warp_dx[keep]
        )
        path = [(0.36 * scale, 0.0), (0.58 * scale, 0.05 * scale), (0.85, 0.16)]
        cleft = np.inf
        for side in (-1.0, 1.0):
            for start, end in zip(path[:-1], path[1:]):
                ends = (side * start[0], start[1]), (side * end[0], end[1])
                cleft = np.minimum(cleft, _segment_distance(sub, *ends))
        sylvian[keep] = cleft - cx.sylvian_width * present[keep][:, None, None]

    return np.minimum.reduce([depth, sulci, sylvian]), midline, falx_cut


def _ventricle_distance(deep: _Deep, grid: _Grid, caudate: np.ndarray) -> np.ndarray:
    """Signed distance to the ventricles (negative inside); ``(S, H, W)``.

    Each lateral ventricle is a tube around a parabola ``x = gap + bow * u^2``
    (``u`` runs along the head from back, -1, to front, +1). Its width is the
    largest of three bumps, each present over its own range of heights:
    the frontal horn (lowest to middle), the body (middle to top) and the
    atrium (low to middle). So the lowest slice shows small frontal horns,
    the next the "butterfly" of frontal horns and atria, then the bodies,
    then nothing. The septum pellucidum separates the two sides.
    """
    z = grid.zz - deep.lift
    u = (grid.ya - deep.y0) / deep.length
    frontal = np.exp(-(((u - 0.45) / 0.35) ** 2)) * _bump(z, 0.0, 0.36)
    body = 0.75 * np.exp(-(((u + 0.05) / 0.55) ** 2)) * _bump(z, 0.17, 0.24)
    atrium = 0.9 * np.exp(-(((u + 0.6) / 0.3) ** 2)) * _bump(z, -0.02, 0.26)
    ends = np.sqrt(np.clip(1.0 - u**2, 0.0, 1.0))
    width = deep.width * deep.size * np.maximum.reduce([frontal, body, atrium]) * ends
    # The horns spread apart more lower down.
    lower = np.clip((0.2 - z) / 0.4, 0.0, 1.0)
    front, back = (np.float32(b) for b in deep.bow)
    bow = np.where(u > 0, front, back) * (0.4 + 0.6 * lower)
    septum = 0.008

    ventricles = np.inf
    for side in (-1.0, 1.0):
        tube = np.abs(grid.xa - side * (deep.gap + bow * u**2)) - width
        tube = np.maximum(tube, septum - side * grid.xa)
        # No ventricle where its width vanishes (ends, other heights).
        tube = np.where(width > 0.002, tube, np.inf)
        ventricles = np.minimum(ventricles, tube)

    # The caudate heads bulge into the frontal horns.
    ventricles = np.maximum(ventricles, -caudate)

    # The third ventricle: a midline slit between the thalami, low down.
    third_width = deep.third * _bump(z, -0.18, 0.2)
    third = np.maximum(np.abs(grid.xa) - third_width, np.abs(grid.ya + 0.08) - 0.12)
    third = np.where(third_width > 0, third, np.inf)
    return np.minimum(ventricles, third)


def _nuclei_distances(deep: _Deep, grid: _Grid) -> list:
    """Signed distances to each pair of deep gray nuclei; ``(S, H, W)`` each.

    Computed only on the planes a nucleus reaches: elsewhere it is ``inf``.
    """
    distances = []
    for centre, radii, angle in deep.nuclei:
        distance = np.full(grid.shape, np.inf, dtype=np.float32)
        keep = np.abs(grid.z - centre[2]) < radii[2]
        if keep.any():
            sub = grid.planes(keep)
            left = _ellipsoid_sdf(sub, centre, radii, angle)
            right = _ellipsoid_sdf(sub, (-centre[0], centre[1], centre[2]), radii, -angle)
            distance[keep] = np.minimum(left, right)
        distances.append(distance)
    return distances


def _lesion_radius(lesion: _Lesion, z) -> np.ndarray:
    """In-plane radius of the lesion at heights ``z`` (0 where absent).

    The vertical profile is a "superellipse": the lesion keeps most of its
    width over its height and ends quickly, so a slice either clearly shows
    it or does not.
    """
    t = np.abs(np.asarray(z, dtype=np.float64) - lesion.centre[2]) / lesion.half_height
    return lesion.radius * np.sqrt(np.clip(1.0 - t**4, 0.0, 1.0))


def lesion_on_slice(lesion: _Lesion, z) -> np.ndarray:
    """Whether each plane shows the lesion: it cuts at least a quarter of its width.

    The lesion is drawn on exactly these planes. Thanks to the steep
    vertical profile, the planes cutting less than a quarter of it lie
    within 2% of its half height from its top or bottom: leaving them out
    is invisible.
    """
    if not lesion.present:
        return np.zeros(np.shape(z), dtype=bool)
    return _lesion_radius(lesion, z) >= 0.25 * lesion.radius


def _draw_lesion(lesion: _Lesion, grid: _Grid, tissue: dict, value, inside) -> None:
    """Paint the lesion over the brain intensities ``value``, in place.

    Edema fades out to 1.5 radii; the lesion itself is bright, and a
    ring lesion has a darker, blurry-edged core. ``inside`` (the brain's
    coverage) keeps it within the brain.
    """
    keep = lesion_on_slice(lesion, grid.z)
    if not keep.any():
        return
    # Work on the planes that show the lesion only.
    sub = grid.planes(keep)
    radius = _lesion_radius(lesion, sub.z).astype(np.float32)[:, None, None]
    cos, sin = math.cos(lesion.angle), math.sin(lesion.angle)
    dx, dy = sub.xa - lesion.centre[0], sub.ya - lesion.centre[1]
    u = cos * dx + sin * dy
    v = (-sin * dx + cos * dy) / lesion.aspect
    # Radius normalised by the lesion's size on each plane, made irregular.
    q = np.sqrt(u * u + v * v) / radius * (1.0 + 0.15 * _evaluate(lesion.shape, sub))
    pixel_q = sub.pixel / radius  # one pixel in units of q

    region, mask = value[keep], inside[keep]
    edema = np.clip((1.5 - q) / 0.5, 0.0, 1.0) ** 2
    region += (tissue["edema"] - region) * edema * mask
    region += (tissue["lesion_rim"] - region) * _coverage(q - 1.0, pixel_q) * mask
    if lesion.ring:
        core = _coverage(q - 0.55, pixel_q + 0.15)
        region += (tissue["lesion_core"] - region) * core * mask
    value[keep] = region


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def render(p: _Patient, z, image_size: int, rng) -> np.ndarray:
    """Render the axial planes at heights ``z`` of one patient.

    Tissues are painted from the outside in, each blended by the fraction of
    the pixel it covers; then the scanner effects are applied.

    Returns
    -------
    np.ndarray
        ``(S, H, W)`` float32 in ``[0, 1]``.
    """
    grid = _make_grid(image_size, z, p.head.angle, p.head.centre)
    t = p.scanner.tissue
    # Edges are ramps 1.5 pixels wide: partial volume, and no beading of
    # thin tilted structures.
    pix = 1.5 * grid.pixel
    head = _head_distance(p.head, grid)
    inner_skull = head + p.head.scalp + p.head.skull
    # The brain sits inside the skull with a CSF rim of uneven width.
    rim = p.head.csf * (1.0 + 0.45 * np.tanh(_evaluate(p.head.rim, grid)))
    depth = -(inner_skull + rim)  # depth below the brain surface

    csf_distance, midline, falx_cut = _cortical_csf_distance(p, grid, depth)
    # Brain tissue: white matter, gray matter within `gray` of CSF, then CSF.
    gray = p.cortex.gray
    brain = t["white"] + (t["gray"] - t["white"]) * _coverage(csf_distance - gray, pix)
    brain += (t["csf"] - brain) * _coverage(csf_distance, pix)
    nuclei = _nuclei_distances(p.deep, grid)
    brain += (t["deep_gray"] - brain) * _coverage(np.minimum.reduce(nuclei), pix)
    ventricles = _ventricle_distance(p.deep, grid, caudate=nuclei[0])
    brain += (t["csf"] - brain) * _coverage(ventricles, pix)
    texture = _evaluate(p.scanner.texture, grid)
    brain *= 1.0 + p.scanner.texture_amp * texture
    if p.lesion.present:
        _draw_lesion(p.lesion, grid, t, brain, _coverage(-depth, pix))

    # Outside in: air, scalp, skull, then the content of the skull.
    # Scalp: bright fat between thinner, darker skin and galea.
    within_scalp = np.clip(-head / p.head.scalp, 0.0, 1.0)
    image = t["scalp"] * (0.55 + 0.45 * np.sin(np.pi * within_scalp)) * _coverage(head, pix)
    image *= 1.0 + 2.0 * p.scanner.texture_amp * texture
    # Skull: dark bone, with some fatty marrow between its two tables.
    within_skull = np.clip(-(head + p.head.scalp) / p.head.skull, 0.0, 1.0)
    bone = t["skull"] + p.head.marrow * t["scalp"] * np.sin(np.pi * within_skull) ** 4
    image += (bone - image) * _coverage(head + p.head.scalp, pix)
    image += (brain - image) * _coverage(inner_skull, pix)
    # The falx: a thin dural sheet in the midline of the fissure.
    # It is thinner than a pixel: drawn as a one-pixel tent scaled to its
    # true width, which keeps a tilted line from looking beaded.
    falx = min(1.0, 0.008 / grid.pixel) * np.clip(1.0 - midline / grid.pixel, 0.0, 1.0)
    falx = falx * _coverage(falx_cut, pix) * _coverage(inner_skull, pix)
    image += (t["falx"] - image) * falx

    return _scan(image, p.scanner, grid, rng)


def _scan(image, scanner: _Scanner, grid: _Grid, rng) -> np.ndarray:
    """Apply bias field, contrast curve, blur and Rician noise; clip to ``[0, 1]``."""
    bias = np.exp(scanner.bias_amp * _evaluate(scanner.bias, grid))
    image = scanner.gain * (np.clip(image * bias, 0.0, None) ** scanner.gamma)
    # A scanner's point spread: blend in a [1, 2, 1] / 4 blur along both axes
    # (np.roll wraps around, harmless since the image borders are air).
    for axis in (1, 2):
        blurred = 0.5 * image + 0.25 * (np.roll(image, 1, axis) + np.roll(image, -1, axis))
        image = image + scanner.blur * (blurred - image)
    # Magnitude images have Rician noise: |signal + complex Gaussian noise|.
    real = image + scanner.noise * rng.standard_normal(image.shape, dtype=np.float32)
    imag = scanner.noise * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.sqrt(real * real + imag * imag), 0.0, 1.0).astype(np.float32)


def single_threaded_blas():
    """Keep BLAS on one thread while rendering.

    The matrix products in :func:`_evaluate` are small; on a busy 2-core
    machine, handing each to a pool of threads made them 50x slower than
    doing them on the calling thread. ``threadpoolctl`` comes with
    scikit-learn; without it, nothing changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional speed-up
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
