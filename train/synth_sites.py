"""Acquisition sites of the synthetic cohort: carts, filters, rates, noise, formats, and the external site.

A site is what a hospital's ECG department contributes to a record: the cart's sampling
rate, band-pass and ADC resolution, its calibration (and how much that calibration
spreads from record to record), the mains frequency and whether a notch is on, how
noisy its recording rooms are, how often a technician swaps the arm electrodes, and the
file format its system sends. Values and sources: docs/synthetic_cohort.md.

The *external* sites stand for another country's equipment and referral pattern (the
paper's open question): other vendors and filters, 50 Hz mains without a notch, more
noise, a wider calibration spread, more limb-lead reversals and another class mix.
Their patients are written with ``holdout=external`` in the manifest and are never
trained or selected on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lasan.train.synth_beats import CartSettings

__all__ = ["Site", "SITES", "EXTERNAL_SITES", "EXTERNAL_CLASS_MIX", "ALL_SITES", "pick_site", "site_named"]


@dataclass(frozen=True)
class Site:
    """One acquisition site: its cart settings, mains frequency, noise and what it sends."""

    name: str
    weight: float  # share of the (internal or external) patients whose home site this is
    fs: float
    filter_low_hz: float
    filter_high_hz: float
    adc_gain: float  # units per mV: 200 = 5 uV, 400 = 2.5 uV, 1000 = 1 uV resolution
    calibration: float  # the site's mean amplifier gain error (multiplicative)
    mains_hz: float
    notch: bool
    format: str  # "wfdb" | "dicom" | "hl7"
    durations_s: tuple[float, ...] = (10.0,)
    duration_p: tuple[float, ...] = (1.0,)
    manufacturer: str = "LASAN synthetic"
    calibration_sd: float = 0.03  # record-to-record gain spread (lognormal sigma)
    noise_scale: float = 1.0  # multiplies baseline wander and EMG
    mains_scale: float = 1.0  # multiplies mains interference (before any notch)
    limb_reversal: float = 0.01  # share of records with the LA and RA electrodes swapped
    external: bool = False  # an external-validation site (manifest holdout=external)

    def cart(self, calibration: float | None = None) -> CartSettings:
        """The cart, with this record's calibration (the site's mean if None)."""
        gain = self.calibration if calibration is None else calibration
        return CartSettings(self.fs, self.filter_low_hz, self.filter_high_hz, self.adc_gain, gain)

    def draw_calibration(self, rng: np.random.Generator) -> float:
        """One record's amplifier gain: the site's mean with its spread."""
        return float(self.calibration * rng.lognormal(0.0, self.calibration_sd))


# 0.05-150 Hz is the AHA diagnostic bandwidth (Kligfield et al. 2007); 0.5-40 Hz (site-C,
# ext-F) is a monitoring/"muscle filter" setting that distorts ST-T and removes epsilon
# spikes. Limb-lead reversal in 0.4-4 % of ECGs (Rudiger et al. 2007; Batchvarov et al. 2007).
SITES: tuple[Site, ...] = (
    Site("site-A", 0.32, 500.0, 0.05, 150.0, 200.0, 1.00, 60.0, False, "wfdb"),
    Site("site-B", 0.12, 1000.0, 0.05, 150.0, 400.0, 1.03, 60.0, False, "dicom", calibration_sd=0.02),
    Site("site-C", 0.24, 250.0, 0.5, 40.0, 200.0, 0.97, 50.0, True, "wfdb", (10.0, 12.0), (0.8, 0.2),
         calibration_sd=0.05, noise_scale=1.3, limb_reversal=0.02),
    Site("site-D", 0.20, 257.0, 0.05, 100.0, 1000.0, 1.00, 60.0, False, "wfdb"),
    Site("site-E", 0.12, 500.0, 0.15, 100.0, 400.0, 1.02, 50.0, True, "hl7", (10.0, 8.0), (0.85, 0.15)),
)

EXTERNAL_SITES: tuple[Site, ...] = (
    Site("ext-F", 0.55, 500.0, 0.5, 40.0, 200.0, 0.94, 50.0, False, "hl7", (10.0,), (1.0,),
         manufacturer="LASAN synthetic (external)", calibration_sd=0.07, noise_scale=1.6, mains_scale=2.0,
         limb_reversal=0.04, external=True),
    Site("ext-G", 0.45, 1000.0, 0.05, 150.0, 1000.0, 1.06, 50.0, False, "dicom", (10.0,), (1.0,),
         manufacturer="LASAN synthetic (external)", calibration_sd=0.06, noise_scale=1.4, mains_scale=3.0,
         limb_reversal=0.03, external=True),
)
# Another referral pattern: population/family screening brings more unaffected people.
EXTERNAL_CLASS_MIX: dict[str, float] = {"ARVC": 0.25, "LQTS": 0.25, "control": 0.50}

ALL_SITES: tuple[Site, ...] = (*SITES, *EXTERNAL_SITES)


def pick_site(rng: np.random.Generator, sites: tuple[Site, ...] = SITES, exclude: Site | None = None) -> Site:
    """A site drawn by weight from ``sites`` (not ``exclude``)."""
    pool = [s for s in sites if s is not exclude] or list(sites)
    w = np.array([s.weight for s in pool])
    return pool[int(rng.choice(len(pool), p=w / w.sum()))]


def site_named(name: str) -> Site:
    """The site called ``name`` (internal or external). Raises KeyError for an unknown name."""
    for site in ALL_SITES:
        if site.name == name:
            return site
    raise KeyError(name)
