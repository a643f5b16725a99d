"""Rotating multi-beam LiDAR models: beam elevation tables, azimuth resolution, mounting, range and noise.

Rays leave the sensor origin (the LiDAR frame's origin, REP 103); ray ``beam * columns + column`` has the
elevation ``elevations_deg[beam]`` (ascending) and the azimuth ``-pi + column * 2 pi / columns`` (radians,
counter-clockwise from +x). The ground lies ``mount_height`` metres below the origin at the sensor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SENSORS", "SensorModel", "get_sensor"]


@dataclass(frozen=True)
class SensorModel:
    """One spinning LiDAR. Angles in degrees, distances in metres."""

    name: str
    elevations_deg: tuple[float, ...]  # ascending
    columns: int  # firings per revolution per beam
    mount_height: float
    max_range: float
    min_range: float = 2.5
    range_noise: float = 0.02  # standard deviation along the ray
    dropout: float = 0.03  # probability that a return is lost at random
    intensity_noise: float = 0.03

    @property
    def beams(self) -> int:
        return len(self.elevations_deg)

    @property
    def azimuth_resolution(self) -> float:
        """Radians between neighbouring columns."""
        return 2.0 * math.pi / self.columns

    def elevations(self) -> np.ndarray:
        return np.radians(np.asarray(self.elevations_deg, dtype=np.float64))

    def azimuths(self) -> np.ndarray:
        return -math.pi + np.arange(self.columns) * self.azimuth_resolution

    def directions(self) -> np.ndarray:
        """Unit ray directions ``(beams * columns, 3)`` float64, ray index ``beam * columns + column``."""
        return _directions(self)


@functools.lru_cache(maxsize=8)
def _directions(sensor: SensorModel) -> np.ndarray:
    el = sensor.elevations()[:, None]
    az = sensor.azimuths()[None, :]
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) * np.ones_like(az)], axis=-1)
    d = d.reshape(-1, 3)
    d.setflags(write=False)
    return d


def _hdl64_elevations() -> tuple[float, ...]:
    # Two blocks like the HDL-64E: upper 32 lasers +2.0 .. -8.33 deg (1/3 deg apart), lower 32 lasers
    # -8.83 .. -24.9 deg (about 1/2 deg apart).
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.83, -24.9, 32)
    return tuple(float(v) for v in np.sort(np.concatenate([upper, lower])))


def _vlp32_elevations() -> tuple[float, ...]:
    # VLP-32C-like: -25 .. +15 deg, densest (0.33 deg) around the horizon, sparse above and below.
    dense = np.linspace(-4.0, 1.33, 17)
    below = np.array([-25.0, -15.64, -11.31, -8.84, -7.25, -6.15, -5.33, -4.67])
    above = np.array([1.67, 2.33, 3.33, 4.67, 7.0, 10.33, 15.0])
    return tuple(float(v) for v in np.sort(np.concatenate([below, dense, above])))


def _pandar64_elevations() -> tuple[float, ...]:
    # Hesai Pandar64's published layout: -25 .. +15 deg; 48 lasers 1/6 deg apart from +1.83 to -6 deg, 1 deg apart
    # from -7 to -14, then -19 and -25 below and 2, 3, 5, 8, 11 and 15 above.
    fine = np.linspace(11.0 / 6.0, -6.0, 48)
    coarse = np.arange(-7.0, -14.5, -1.0)
    sparse = np.array([15.0, 11.0, 8.0, 5.0, 3.0, 2.0, -19.0, -25.0])
    return tuple(float(v) for v in np.sort(np.concatenate([sparse, fine, coarse])))


SENSORS: dict[str, SensorModel] = {
    "hdl64": SensorModel("hdl64", _hdl64_elevations(), columns=2083, mount_height=1.73, max_range=120.0,
                         range_noise=0.02, dropout=0.03),
    "vlp32": SensorModel("vlp32", _vlp32_elevations(), columns=1800, mount_height=1.8, max_range=200.0,
                         range_noise=0.03, dropout=0.02),
    "os1-64": SensorModel("os1-64", tuple(float(v) for v in np.linspace(-22.5, 22.5, 64)), columns=2048,
                          mount_height=1.8, max_range=120.0, min_range=1.0, range_noise=0.03, dropout=0.02),
    "vls128": SensorModel("vls128", tuple(float(v) for v in np.sort(np.concatenate(
        [np.linspace(-25.0, -6.0, 24), np.linspace(-5.8, 3.0, 88), np.linspace(3.5, 15.0, 16)]))),
        columns=1800, mount_height=1.9, max_range=200.0, range_noise=0.03, dropout=0.02),
    "pandar64": SensorModel("pandar64", _pandar64_elevations(), columns=1800, mount_height=1.9, max_range=200.0,
                            min_range=0.3, range_noise=0.02, dropout=0.02),
}


def get_sensor(name: str) -> SensorModel:
    try:
        return SENSORS[name]
    except KeyError:
        raise ValueError(f"unknown sensor {name!r}; known: {', '.join(SENSORS)}") from None
