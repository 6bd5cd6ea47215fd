"""Procedural landscapes: the embedded default dataset (five classes, any size multiple of 8).

Each image is painted back to front in pure numpy: a sky (day, dusk or overcast, with a sun or
clouds), then the class's terrain as layers whose outlines are 1-D functions of x (ridgelines,
shorelines, tree tops), so most work is on (W,) vectors broadcast against a (H, 1) column.
Edges are antialiased analytically (coverage = distance to the outline in pixels, clipped to
[0, 1]) instead of by supersampling, which keeps a 32 px image well under a millisecond.

The classes share colours on purpose (overcast mountains and glaciers are both grey-white,
coasts and glaciers both have blue water, a desert at dusk is as orange as a beach at dusk), so a
classifier has to learn shapes and layout, not one mean colour per class.

Image ``i`` of ``synthesize(seed=s)`` is drawn from its own generator ``default_rng([s, i])``
and has class ``i % 5``, so it does not depend on ``n`` or on how the images are batched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from diffscape.core.errors import DiffscapeError
from diffscape.core.layout import check_out
from diffscape.data.dataset import MAX_SIZE, Dataset, building, write_manifest_and_publish

CLASSES = ("Coast", "Desert", "Forest", "Glacier", "Mountain")
SYNTH_VERSION = 1  # bump when the pictures change, so cached statistics are not reused

TAU = 2 * np.pi
T = TypeVar("T")


class SynthError(DiffscapeError, ValueError):
    """Bad arguments to the landscape generator."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def _rgb(r: float, g: float, b: float) -> np.ndarray:
    """A colour as (3, 1, 1) floats in [0, 1], so that it broadcasts against (H, W) fields."""
    return np.array([r / 255, g / 255, b / 255], np.float32).reshape(3, 1, 1)


def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float], amount: float) -> np.ndarray:
    """A colour near ``rgb`` (0-255), moved by ``amount`` (0-1 scale) per channel."""
    # Three scalars: plain Python is cheaper than five numpy calls on a 3-vector.
    e = rng.standard_normal(3).tolist()
    return _rgb(*(min(max(c + 255 * amount * d, 0.0), 255.0) for c, d in zip(rgb, e, strict=True)))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A uniform float in [lo, hi); ``rng.uniform`` costs 3x more per scalar."""
    return lo + (hi - lo) * rng.random()


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A uniform integer in [lo, hi)."""
    return lo + int((hi - lo) * rng.random())


def _pick(rng: np.random.Generator, options: list[T]) -> T:
    return options[int(len(options) * rng.random())]


def _clip(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``np.clip`` at half its overhead on the small arrays used here."""
    return np.minimum(np.maximum(a, lo), hi)


def _mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a + (b - a) * t


@dataclass(frozen=True)
class _Scene:
    """What every layer needs: pixel centres, the size and the light of the time of day."""

    y: np.ndarray  # (H, 1) pixel-centre rows in [0, 1], 0 = top
    x: np.ndarray  # (W,) pixel-centre columns in [0, 1]
    size: int
    light: np.ndarray  # (3, 1, 1) multiplies every terrain colour (dusk is warm and dim)
    desat: float  # how far terrain colours move towards grey (overcast flattens colour)
    haze: np.ndarray  # (3, 1, 1) sky colour at the horizon; distant layers fade towards it
    sun_x: float  # where the light comes from horizontally, for shading slopes

    def lit(self, rgb: np.ndarray) -> np.ndarray:
        if self.desat:
            rgb = rgb + (rgb.mean(0) - rgb) * self.desat
        return rgb * self.light

    def cover(self, d: np.ndarray) -> np.ndarray:
        """Antialiased coverage from a signed distance ``d`` (image units, > 0 inside).

        Outlines pass vertical distances, exact for flat edges and close enough at the slopes
        drawn here; a one-pixel ramp is what a box filter over the pixel would give.
        """
        a = d * self.size
        a += 0.5
        return np.minimum(np.maximum(a, 0, out=a), 1, out=a)


@lru_cache(maxsize=32)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = c[:, None].copy(), c.copy()
    y.flags.writeable = x.flags.writeable = False
    return y, x


@lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells + 1) weights that linearly interpolate a coarse lattice to ``size`` pixels."""
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    lo = np.minimum(pos.astype(int), cells - 1)
    frac = pos - lo
    m = np.zeros((size, cells + 1), np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    m.flags.writeable = False
    return m


def _noise(rng: np.random.Generator, size: int, cells: tuple[int, ...] = (3, 7)) -> np.ndarray:
    """Smooth value noise (H, W) in about [0, 1]: octaves of bilinear lattices, as matmuls."""
    out = np.zeros((size, size), np.float32)
    total = 0.0
    for k, c in enumerate(cells):
        m = _interp_matrix(size, c)
        lattice = rng.random((c + 1, c + 1), dtype=np.float32)
        amp = 0.5**k
        out += amp * (m @ lattice @ m.T)
        total += amp
    return out / total


def _sines(rng: np.random.Generator, x: np.ndarray, freqs: tuple[float, ...]) -> np.ndarray:
    """Sum of random-phase sines at ``freqs`` (cycles per width), amplitudes falling as 1/f."""
    f = np.asarray(freqs, np.float32)[:, None] * (0.8 + 0.45 * rng.random((len(freqs), 1)))
    phase = TAU * rng.random((len(freqs), 1))
    return (np.sin(TAU * f * x + phase) / f).sum(0, dtype=np.float32)


def _ridged(rng: np.random.Generator, x: np.ndarray, f0: float, octaves: int) -> np.ndarray:
    """Fractal ridgeline in [0, 1]: ``1 - |sin|`` has sharp upward cusps, i.e. peaks."""
    k = np.arange(octaves, dtype=np.float32)[:, None]
    f = f0 * 2**k * (0.85 + 0.3 * rng.random((octaves, 1)))
    amp = 0.4**k / (0.4**k).sum()
    phase = np.pi * rng.random((octaves, 1))
    return (amp * (1 - np.abs(np.sin(np.pi * f * x + phase)))).sum(0, dtype=np.float32)


def _paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    """Alpha-composite ``color`` (anything broadcasting to (3, H, W)) over ``img`` in place.

    Channels-first keeps the innermost loop over whole rows (4x faster than (H, W, 3) here).
    """
    delta = color - img
    delta *= alpha
    img += delta


def _shade_by_slope(s: _Scene, top: np.ndarray, strength: float, smooth: float) -> np.ndarray:
    """(W,) brightness factors: slopes facing the sun lit, the others in shadow.

    The slope is averaged over ``smooth`` (fraction of the width), so that small jags in the
    outline do not shade as thin vertical stripes; whole faces are lit or dark.
    """
    slope = np.diff(top, prepend=top[0]) * s.size  # d(top)/dx; top grows downwards
    k = max(1, round(smooth * s.size))
    if k > 1:
        slope = np.convolve(slope, np.full(k, 1 / k, np.float32), "same")
    facing = -slope * np.sign(s.sun_x - 0.5 + 1e-3)
    return 1 + strength * np.tanh(2 * facing)


# ---------------------------------------------------------------------------------------------
# Sky

SKY_MODES = ("day", "dusk", "overcast")


def _sky(img: np.ndarray, rng: np.random.Generator, size: int, horizon: float, mode: str) -> _Scene:
    """Paint the sky over the whole image and return the scene lit to match it."""
    y, x = _grid(size)
    sun_x = _u(rng, 0.1, 0.9)
    if mode == "day":
        top = _jitter(rng, (45, 105, 200), 0.07)
        low = _jitter(rng, (175, 210, 235), 0.05)
        light, desat = np.ones((3, 1, 1), np.float32), 0.0
    elif mode == "dusk":
        top = _jitter(rng, (55, 45, 115), 0.07)
        low = _jitter(rng, _pick(rng, [(250, 150, 70), (240, 120, 120), (250, 190, 110)]), 0.06)
        light = _rgb(255, 200, 165) * _u(rng, 0.65, 0.9)
        desat = 0.0
    else:
        top = _jitter(rng, (140, 145, 155), 0.05)
        low = _jitter(rng, (200, 202, 206), 0.04)
        light = _rgb(235, 240, 247) * _u(rng, 0.8, 1.0)
        desat = _u(rng, 0.3, 0.6)

    t = _clip(y / max(horizon, 0.05), 0, 1) ** _u(rng, 0.6, 1.6)  # (H, 1)
    img[:] = top + t * (low - top)
    s = _Scene(y=y, x=x, size=size, light=light, desat=desat, haze=low, sun_x=sun_x)

    if mode == "overcast":
        # Layered cloud deck: brightness varies smoothly, stronger high in the sky.
        n = _noise(rng, size, (3, 6))
        img *= 1 + 0.25 * (n - 0.5) * (1 - t)
        return s

    # A dusk sun sits low and large, partly hidden by the land painted after it.
    sun_y = horizon * (_u(rng, 0.15, 0.6) if mode == "day" else _u(rng, 0.7, 1.05))
    r = _u(rng, 0.035, 0.06) if mode == "day" else _u(rng, 0.05, 0.09)
    d = np.sqrt((x - sun_x) ** 2 + (y - sun_y) ** 2)
    sun = _rgb(255, 250, 225) if mode == "day" else _jitter(rng, (255, 200, 110), 0.04)
    if rng.random() < 0.8:
        glow = 0.45 * np.exp(-((d / (3.5 * r)) ** 2))
        _paint(img, np.maximum(glow, s.cover(r - d)), sun)

    if rng.random() < 0.7:
        # Soft clouds: thresholded noise, thinned towards the horizon.
        n = _noise(rng, size, (4, 9))
        thr = _u(rng, 0.5, 0.62)
        alpha = _clip((n - thr) * 5, 0, 0.9) * (1 - t) ** 0.5
        cloud = _rgb(250, 250, 252) if mode == "day" else _jitter(rng, (250, 170, 160), 0.05)
        _paint(img, alpha, cloud)
    return s


def _pick_mode(rng: np.random.Generator, p_day: float, p_dusk: float) -> str:
    """A time of day from :data:`SKY_MODES`; the rest of the probability is overcast."""
    u = rng.random()
    return SKY_MODES[0 if u < p_day else 1 if u < p_day + p_dusk else 2]


# ---------------------------------------------------------------------------------------------
# Classes


def _coast(img: np.ndarray, rng: np.random.Generator, size: int) -> None:
    horizon = _u(rng, 0.3, 0.55)
    s = _sky(img, rng, size, horizon, _pick_mode(rng, 0.55, 0.25))
    y, x = s.y, s.x

    if rng.random() < 0.4:  # a headland on one side, hazy with distance
        side = _pick(rng, [-1.0, 1.0])
        edge = 0.5 + side * _u(rng, 0.1, 0.35)
        land = _clip((x - edge) * side * _u(rng, 3, 8), 0, 1) * _u(rng, 0.06, 0.15)
        land_top = horizon - land * (1 + 0.2 * _sines(rng, x, (5, 11)))
        col = _mix(s.lit(_jitter(rng, (70, 95, 60), 0.05)), s.haze, 0.45)
        _paint(img, s.cover(y - land_top), col)

    shore = _u(rng, horizon + 0.2, 0.86) + _u(rng, -0.12, 0.12) * (x - 0.5)
    shore = shore + 0.02 * _sines(rng, x, (1.5, 3.5))
    far = _mix(s.lit(_jitter(rng, (25, 70, 130), 0.06)), s.haze, 0.25)
    near = s.lit(_jitter(rng, _pick(rng, [(40, 150, 170), (30, 110, 160)]), 0.06))
    depth = _clip((y - horizon) / max(shore.mean() - horizon, 0.05), 0, 1)  # (H, 1)
    sea = far + depth * (near - far)
    # Wave streaks: bright wobbly rows, denser far away, as perspective compresses them.
    rows = np.sin(TAU * _u(rng, 5, 9) * np.abs(y - horizon) ** 0.6 + 0.6 * np.sin(TAU * 3 * x))
    sea = sea * (1 + 0.12 * _clip(rows, 0, 1))
    _paint(img, s.cover(y - horizon), sea)

    foam = s.lit(_rgb(240, 245, 245))
    gap = _u(rng, 0.035, 0.06)
    surf = np.zeros((size, size), np.float32)
    for k in range(_int(rng, 2, 5)):  # surf lines parallel to the shore
        line = shore - gap * (k + 0.3) + 0.008 * _sines(rng, x, (4, 9))
        width = 0.012 + 0.004 * k
        surf = np.maximum(surf, (0.9 - 0.15 * k) * np.exp(-(((y - line) / width) ** 2)))
    _paint(img, surf, foam)

    wet = s.lit(_jitter(rng, (150, 125, 90), 0.05))
    dry = s.lit(_jitter(rng, _pick(rng, [(225, 200, 150), (235, 215, 170), (205, 180, 135)]), 0.05))
    into = _clip((y - shore) / 0.06, 0, 1)  # wet band along the water line
    sand = wet + into * (dry - wet)
    sand = sand * (1 + 0.06 * (_noise(rng, size, (6,)) - 0.5))
    _paint(img, s.cover(y - shore), sand)


def _desert(img: np.ndarray, rng: np.random.Generator, size: int) -> None:
    horizon = _u(rng, 0.3, 0.55)
    s = _sky(img, rng, size, horizon, _pick_mode(rng, 0.55, 0.35))
    y, x = s.y, s.x

    if rng.random() < 0.35:  # a flat-topped mesa on the horizon
        cx, w = _u(rng, 0.15, 0.85), _u(rng, 0.1, 0.25)
        plateau = _clip((w - np.abs(x - cx)) * _u(rng, 8, 20), 0, 1)
        top = horizon - plateau * _u(rng, 0.06, 0.14)
        col = _mix(s.lit(_jitter(rng, (160, 80, 50), 0.05)), s.haze, 0.4)
        _paint(img, s.cover(y - top), col)

    palette = _pick(rng, [(225, 185, 120), (215, 140, 75), (235, 200, 145)])
    layers = _int(rng, 3, 5)
    for k in range(layers):
        near = (k + 1) / layers
        base = horizon + (1 - horizon) * (k / layers) * _u(rng, 0.8, 1.0)
        f = _u(rng, 0.7, 2.0) / (0.5 + near)
        phase = _u(rng, 0, TAU)
        t = TAU * f * x + phase
        crest = np.sin(t + 0.6 * np.sin(t))  # skewed: gentle windward, steep slip face
        top = base - (0.04 + 0.08 * near) * (0.6 + 0.4 * crest) + 0.01 * _sines(rng, x, (5,))
        col = s.lit(_jitter(rng, palette, 0.05)) * (0.8 + 0.2 * near)
        col = _mix(col, s.haze, 0.35 * (1 - near))
        shade = _shade_by_slope(s, top, 0.3, 0.05)
        below = _clip((y - top) / 0.25, 0, 1)
        texture = col * (shade * (1 - 0.15 * below))  # (3, H, W)
        if k == layers - 1:  # wind ripples on the nearest dune
            ripples = np.sin(TAU * 7 * (y + 0.3 * x + 0.03 * np.sin(TAU * 2 * x)))
            texture = texture * (1 + 0.05 * ripples)
        _paint(img, s.cover(y - top), texture)


def _tree_tops(
    rng: np.random.Generator, x: np.ndarray, n: int, base: float, height: float, conifer: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Top outline (W,) of a row of ``n`` trees, and their centres."""
    cx = (np.arange(n) + rng.uniform(-0.4, 0.4, n)) / (n - 1) * 1.1 - 0.05
    h = height * rng.uniform(0.7, 1.2, n)
    dx = np.abs(x - cx[:, None])  # (n, W)
    if conifer:
        tops = (base - h)[:, None] + dx * (rng.uniform(2.2, 3.2, n)[:, None])
    else:
        r = (h / 2)[:, None]
        tops = (base - h / 2)[:, None] - np.sqrt(np.maximum(r**2 - dx**2, 0))
        tops = np.where(dx < r, tops, np.inf)
    return tops.min(axis=0).astype(np.float32), cx


def _forest(img: np.ndarray, rng: np.random.Generator, size: int) -> None:
    horizon = _u(rng, 0.05, 0.3)
    s = _sky(img, rng, size, horizon + 0.15, _pick_mode(rng, 0.5, 0.25))
    y, x = s.y, s.x
    kind = _pick(rng, ["conifer", "broadleaf", "mixed"])
    greens = [(45, 95, 45), (60, 110, 50), (35, 80, 55), (80, 115, 45)]
    rows = _int(rng, 3, 5)
    trunk_row = rng.random() < 0.6
    for k in range(rows):
        near = (k + 1) / rows
        conifer = kind == "conifer" or (kind == "mixed" and rng.random() < 0.5)
        n = int(_int(rng, 5, 9) * (1.5 - 0.5 * near))
        base = horizon + (0.9 - horizon) * near * (0.6 if trunk_row and k == rows - 1 else 0.8)
        top, cx = _tree_tops(rng, x, n, base + 0.05, _u(rng, 0.18, 0.3) * (0.6 + near), conifer)
        col = s.lit(_jitter(rng, _pick(rng, greens), 0.05)) * (1.1 - 0.35 * near)
        col = _mix(col, s.haze, 0.45 * (1 - near) ** 2)
        leaves = col * (0.75 + 0.5 * _noise(rng, size, (5, 11)))
        _paint(img, s.cover(y - top), leaves)

    if trunk_row:  # the nearest trees' trunks standing on the forest floor
        canopy_bottom = horizon + (0.9 - horizon) * 0.6 + 0.05 + 0.03 * _sines(rng, x, (3, 7))
        dark = s.lit(_jitter(rng, (25, 40, 25), 0.03))
        _paint(img, s.cover(y - canopy_bottom), dark)
        n = _int(rng, 4, 8)
        cx = (np.arange(n) + rng.uniform(-0.3, 0.3, n) + 0.5) / n
        w = rng.uniform(0.015, 0.035, n)
        trunk = _clip(((w[:, None] - np.abs(x - cx[:, None])) * size + 0.5), 0, 1).max(0)
        brown = s.lit(_jitter(rng, (75, 50, 30), 0.04))
        _paint(img, trunk * s.cover(y - canopy_bottom + 0.02), brown)
        floor_top = _u(rng, 0.85, 0.95) + 0.02 * _sines(rng, x, (2, 5))
        floor = s.lit(_jitter(rng, _pick(rng, [(70, 90, 40), (90, 70, 40)]), 0.05))
        _paint(img, s.cover(y - floor_top), floor)


def _glacier(img: np.ndarray, rng: np.random.Generator, size: int) -> None:
    top_y = _u(rng, 0.22, 0.5)
    s = _sky(img, rng, size, top_y, _pick_mode(rng, 0.45, 0.15))
    y, x = s.y, s.x

    if rng.random() < 0.6:  # pale mountains behind the ice
        peaks = top_y - _u(rng, 0.08, 0.2) * _ridged(rng, x, _u(rng, 1.5, 3), 3)
        rock = _mix(s.lit(_jitter(rng, (120, 125, 140), 0.05)), s.haze, 0.4)
        _paint(img, s.cover(y - peaks), rock)
        snow = _mix(s.lit(_rgb(235, 240, 248)), s.haze, 0.25)
        _paint(img, s.cover(y - peaks) * s.cover(top_y - 0.05 - y), snow)

    water_y = _u(rng, top_y + 0.2, 0.8)
    ice_top = top_y + 0.03 * _sines(rng, x, (1.5, 4)) + 0.012 * _sines(rng, x, (13, 23))
    face = _clip((y - ice_top) / max(water_y - top_y, 0.1), 0, 1)  # 0 top, 1 water
    white = s.lit(_jitter(rng, (240, 245, 250), 0.02))
    blue = s.lit(
        _jitter(rng, _pick(rng, [(160, 205, 230), (140, 190, 225), (185, 220, 235)]), 0.04)
    )
    ice = white + face**0.7 * (blue - white)
    # Crevasses: thin blue-shadowed cracks, mostly vertical, fading towards the top.
    n = _int(rng, 5, 12)
    cx = rng.uniform(0, 1, n)
    lean = rng.uniform(-0.15, 0.15, n)
    dx = x[None, None, :] - cx[:, None, None] - lean[:, None, None] * y[None, :, :]
    crack = (np.exp(-((dx * size / 0.7) ** 2)) * rng.uniform(0.4, 0.9, n)[:, None, None]).max(0)
    crack = crack * _clip(face * 1.6, 0.15, 1)
    ice = ice + crack * (s.lit(_jitter(rng, (60, 120, 170), 0.04)) - ice)
    _paint(img, s.cover(y - ice_top), ice)

    deep = s.lit(_jitter(rng, _pick(rng, [(20, 60, 95), (25, 85, 115), (35, 70, 110)]), 0.05))
    waterline = water_y + 0.01 * _sines(rng, x, (2, 5))
    mirror = np.exp(-np.maximum(y - water_y, 0) / 0.06)  # the ice reflected
    water = deep + 0.35 * mirror * (blue - deep)
    _paint(img, s.cover(y - waterline), water)
    floes = np.zeros((size, size), np.float32)
    for _ in range(_int(rng, 0, 5)):  # floating ice
        fx, fy = _u(rng, 0, 1), _u(rng, water_y + 0.05, 0.97)
        rx, ry = _u(rng, 0.03, 0.09), _u(rng, 0.012, 0.03)
        d = 1 - np.sqrt(((x - fx) / rx) ** 2 + ((y - fy) / ry) ** 2)
        floes = np.maximum(floes, s.cover(d * ry))
    _paint(img, floes, _mix(white, blue, _u(rng, 0, 0.4)))


def _mountain(img: np.ndarray, rng: np.random.Generator, size: int) -> None:
    horizon = _u(rng, 0.45, 0.7)
    s = _sky(img, rng, size, horizon - 0.2, _pick_mode(rng, 0.5, 0.25))
    y, x = s.y, s.x
    rocks = [(120, 115, 125), (125, 100, 80), (110, 95, 130), (100, 105, 110)]
    ranges = _int(rng, 2, 4)
    for k in range(ranges):
        near = (k + 1) / ranges
        height = _u(rng, 0.25, 0.45) * (1.3 - 0.6 * near)  # far ranges tower over near ones
        ridge = _ridged(rng, x, _u(rng, 1.5, 3.0), 3)
        top = horizon + 0.1 * k - height * ridge
        rock = s.lit(_jitter(rng, _pick(rng, rocks), 0.05)) * (1.05 - 0.3 * near)
        # Snow above an altitude line that wanders a little, so the peaks get caps.
        snow_line = top.min() + height * _u(rng, 0.2, 0.45) + 0.03 * _sines(rng, x, (4, 9))
        snow = s.lit(_rgb(245, 247, 252))
        col = rock + s.cover(snow_line - y) * (snow - rock)
        col *= _shade_by_slope(s, top, 0.3, 0.15)
        # Mist gathers in the valleys and hides distant ranges: fade towards the horizon sky.
        mist = _clip((y - top) / 0.5, 0, 1) * 0.35 + 0.45 * (1 - near)
        col += mist * (s.haze - col)
        _paint(img, s.cover(y - top), col)

    fg_top = _u(rng, 0.78, 0.95) + 0.04 * _sines(rng, x, (1, 2.5))
    fg = s.lit(_jitter(rng, _pick(rng, [(70, 110, 50), (95, 100, 55), (60, 70, 45)]), 0.05))
    fg = fg * (0.85 + 0.3 * _noise(rng, size, (6,)))
    _paint(img, s.cover(y - fg_top), fg)


_RENDERERS = dict(zip(CLASSES, (_coast, _desert, _forest, _glacier, _mountain), strict=True))


def _check_size(size: int) -> None:
    if not isinstance(size, int | np.integer) or size < 8 or size % 8 or size > MAX_SIZE:
        raise SynthError(
            f"size must be a multiple of 8 from 8 to {MAX_SIZE} (got {size!r}); try 32 or 64"
        )


def render_landscape(class_name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One landscape of ``class_name`` as uint8 (3, size, size); all randomness comes from ``rng``."""
    _check_size(size)
    try:
        render = _RENDERERS[class_name]
    except KeyError:
        raise SynthError(
            f"unknown landscape class {class_name!r}; choose one of {', '.join(CLASSES)}"
        ) from None
    img = np.empty((3, size, size), np.float32)
    render(img, rng, int(size))
    return (_clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_index(seed: int, index: int, size: int) -> tuple[np.ndarray, int]:
    """Image ``index`` of the dataset with ``seed``: (uint8 (3, size, size), class index)."""
    label = index % len(CLASSES)
    return render_landscape(CLASSES[label], size, np.random.default_rng([seed, index])), label


# ---------------------------------------------------------------------------------------------
# Dataset


def split_test_indices(n: int, seed: int, test_fraction: float) -> np.ndarray:
    """Sorted indices in the test split: a seeded ``test_fraction`` of each class."""
    rng = np.random.default_rng([seed, 1 << 32])  # a stream no image index can reach
    chosen = []
    for label in range(len(CLASSES)):
        members = np.arange(label, n, len(CLASSES))
        k = int(round(test_fraction * len(members)))
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def synthesize(
    n: int,
    size: int,
    out: str | os.PathLike[str],
    seed: int = 0,
    test_fraction: float = 0.2,
    progress: bool = True,
    overwrite: bool = False,
) -> Dataset:
    """Write ``n`` procedural landscapes (balanced over :data:`CLASSES`) as a dataset folder.

    Image ``i`` depends only on ``(seed, i)``; the test split is a seeded, class-stratified
    ``test_fraction`` of the images, and the rest is ``train``. Images stream to disk one at a
    time, so memory stays flat for any ``n``.
    """
    _check_size(size)
    if not isinstance(n, int | np.integer) or n < len(CLASSES):
        raise SynthError(f"n must be at least {len(CLASSES)} (one image per class), got {n!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 <= test_fraction < 1:
        raise SynthError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    # before any work: a dataset is replaced only with overwrite, anything else never
    out_dir = check_out(out, "dataset", overwrite=overwrite)
    is_test = np.zeros(n, bool)
    is_test[split_test_indices(n, seed, test_fraction)] = True
    if is_test.all():
        raise SynthError(
            f"test_fraction={test_fraction} leaves no training images out of n={n}; "
            "lower test_fraction or raise n"
        )

    splits = ["train", "test"] if is_test.any() else ["train"]
    with building(out_dir, size, splits) as (tmp, writers):
        for i in tqdm(range(n), disable=not progress, desc="synth", unit="img"):
            image, label = render_index(seed, i, size)
            writers["test" if is_test[i] else "train"].add(image, label)
        for w in writers.values():
            w.finish()
        return write_manifest_and_publish(
            tmp,
            out_dir,
            classes=list(CLASSES),
            size=size,
            split_labels={name: w.labels for name, w in writers.items()},
            source=f"synth:seed={int(seed)}",
            resize="none (rendered at size)",
            skipped=[],
            extra={"synth": {"seed": int(seed), "n": int(n), "version": SYNTH_VERSION}},
        )
