"""``lasan synth``: write the synthetic ARVC / LQTS / control cohort and its manifest."""

from __future__ import annotations

import argparse
import time
from collections import Counter

from lasan.errors import ConfigError

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="work/cohort", help="output folder (default: work/cohort)")
    parser.add_argument("--patients", type=int, default=300, help="number of patients (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    parser.add_argument(
        "--external",
        type=int,
        default=None,
        help="patients of the external-validation sites, written with holdout=external and never trained on "
        "(default: 20%% of --patients; 0 for none)",
    )
    parser.add_argument(
        "--formats",
        default="wfdb,dicom,hl7",
        help="comma-separated file formats to write: wfdb (required), dicom, hl7 (default: all three); "
        "sites whose format is left out write WFDB",
    )


def run(args: argparse.Namespace) -> int:
    """Generate the cohort and print a summary.

    Raises:
        ConfigError: bad --patients or --formats.
    """
    from lasan.train.manifest import read_manifest
    from lasan.train.synth import generate_cohort

    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    if args.patients < 3:
        raise ConfigError(f"--patients must be at least 3 (one per class), got {args.patients}")
    start = time.perf_counter()
    if args.external is not None and args.external < 0:
        raise ConfigError(f"--external must be 0 or more, got {args.external}")
    manifest = generate_cohort(args.out, n_patients=args.patients, seed=args.seed, formats=formats,
                               n_external=args.external)
    rows = read_manifest(manifest)
    patients = {r.patient_id: r.label for r in rows if not r.external}
    external = {r.patient_id: r.label for r in rows if r.external}
    labels = Counter(patients.values())
    fmts = Counter(r.format for r in rows)
    n_internal = sum(not r.external for r in rows)
    print(f"SYNTHETIC cohort: {len(patients)} patients, {n_internal} ECGs in {time.perf_counter() - start:.1f} s")
    print("  patients per class: " + ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
    if external:
        print(f"  external validation (holdout=external, never trained on): {len(external)} patients, "
              f"{len(rows) - n_internal} ECGs, " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(external.values()).items())))
    print("  files per format:   " + ", ".join(f"{k} {v}" for k, v in sorted(fmts.items())))
    print(f"  manifest: {manifest}")
    return 0
