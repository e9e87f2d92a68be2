"""``lasan targets``: issue 10's targets measured on the SERVED ensemble, each MET or MISSED.

Everything here goes through a running Triton server (``--url``), the way a client sees the
model; the checkpoint is only read for its split seed and to check that the server and the
in-process :class:`lasan.models.ServedLASAN` agree (tolerance, never exact equality):

1. lead importance vs input-level occlusion, on the test split's disease ECGs (patients the
   model never saw): each lead is zeroed in mV and the ECG is scored again *through Triton*;
   mean per-ECG Spearman between the served ``lead_importance`` and the drops in the
   predicted class's probability must be >= 0.7, and the mean per-ECG maximum weight >= 0.25;
2. top-label ECE <= 0.05 on the test split and on freshly generated patients (a new cohort
   synthesised now with a seed the model never saw, internal sites only);
3. >= 80 % of independent neurokit2 normal ECGs with no disease flagged at the screening
   point, while the screening sensitivity on the test split stays >= 0.9 for each disease.

Prints one line per target and writes a Markdown table (``--out``) plus the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from lasan.errors import ConfigError
from lasan.record import ECGRecord
from lasan.train.faithfulness import ServedOutputs, occluded_records, occlusion_drops, per_ecg_spearman
from lasan.train.independent_normals import NormalsSpec, share_with_ci, simulate_normals
from lasan.train.metrics import ece_noise_floor, ece_with_ci, patient_bootstrap

__all__ = ["TARGETS", "PARITY_TOLERANCE", "TargetResult", "configure", "run", "measure_targets", "to_markdown"]

log = logging.getLogger(__name__)

# The targets.
TARGETS = {
    "spearman": 0.7,
    "max_weight": 0.25,
    "ece": 0.05,
    "normals_no_disease": 0.8,
    "screening_sensitivity": 0.9,
}
PARITY_TOLERANCE = 1e-4  # served vs in-process, probabilities and importance


@dataclass(frozen=True)
class TargetResult:
    """One target: what was measured, its 95 % CI, the bar, and whether it is met."""

    name: str
    measured: float
    low: float
    high: float
    bar: str  # e.g. ">= 0.7"
    met: bool
    n: int
    how: str  # the CI method and the unit counted

    def line(self) -> str:
        verdict = "MET   " if self.met else "MISSED"
        return (
            f"[{verdict}] {self.name}: {self.measured:.3f} (95% CI {self.low:.3f}-{self.high:.3f}, n={self.n}); "
            f"target {self.bar}"
        )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="Triton gRPC address HOST:PORT serving the lasan ensemble")
    parser.add_argument("--checkpoint", required=True, help="the checkpoint the server was built from")
    parser.add_argument("--data", required=True, help="manifest the checkpoint was trained on (its test split is used)")
    parser.add_argument("--out", default="targets.md", help="Markdown file to write (JSON beside it)")
    parser.add_argument(
        "--work", default=None, help="folder for the fresh cohort and cached normals (default: beside --out)"
    )
    parser.add_argument("--fresh-patients", type=int, default=150, help="patients in the freshly generated cohort (about 320 ECGs)")
    parser.add_argument("--fresh-seed", type=int, default=1009, help="seed of the fresh cohort (not the training seed)")
    parser.add_argument("--normals", type=int, default=100, help="neurokit2 normal ECGs")
    parser.add_argument("--normals-seed", type=int, default=NormalsSpec.seed)
    parser.add_argument(
        "--normals-cache", default=None, help="folder of cached neurokit2 normals (default: <work>/normals_cache)"
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="patient-bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per Triton call")


def _score_all(scorer: Any, records: Sequence[ECGRecord], disease: Sequence[str]) -> tuple[ServedOutputs, np.ndarray]:
    """Served outputs for ``records`` and ``(N, D)`` screening flags for the disease classes."""
    probs, imp, agg, flags = [], [], [], []
    classes = scorer.model_info.classes
    leads = scorer.model_info.lead_order
    for record in records:
        s = scorer.score(record)
        probs.append([s.probabilities[c] for c in classes])
        imp.append([s.lead_importance[lead] for lead in leads])
        weights = getattr(s, "aggregator_weights", None) or {}
        agg.append([weights.get(lead, np.nan) for lead in leads])
        flags.append([bool(s.screening.get(d, False)) for d in disease])
    aggregator = np.asarray(agg, dtype=np.float64)
    return (
        ServedOutputs(
            np.asarray(probs, dtype=np.float64),
            np.asarray(imp, dtype=np.float64),
            None if np.isnan(aggregator).any() else aggregator,
        ),
        np.asarray(flags, dtype=bool).reshape(len(records), len(disease)),
    )


def _mean_ci(values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float, int]:
    ok = np.isfinite(values)
    vals, grp = values[ok], groups[ok]
    if not ok.any():
        return float("nan"), float("nan"), float("nan"), 0
    ci = patient_bootstrap(lambda idx: {"m": float(np.mean(vals[idx]))}, grp, n_boot, seed)["m"]
    return ci.estimate, ci.low, ci.high, int(ok.sum())


def _read(rows: Sequence[Any]) -> list[ECGRecord]:
    from lasan.formats import read_ecg

    return [read_ecg(Path(row.path)) for row in rows]


def _parity(ckpt: Any, records: Sequence[ECGRecord], served: ServedOutputs) -> dict[str, float]:
    from lasan.preprocessing import preprocess
    from lasan.train.faithfulness import served_predict

    model = ckpt.served_model()
    x = np.stack([preprocess(r, ckpt.config.input) for r in records])
    local = served_predict(model, x)
    return {
        "max_abs_diff_probabilities": float(np.max(np.abs(local.probs - served.probs))),
        "max_abs_diff_lead_importance": float(np.max(np.abs(local.importance - served.importance))),
        "tolerance": PARITY_TOLERANCE,
    }


def measure_targets(args: argparse.Namespace) -> tuple[list[TargetResult], dict[str, Any]]:
    """Run every measurement against the server; returns the verdicts and the details.

    Raises:
        TritonUnavailableError: the server is unreachable or the model not ready.
        ConfigError: the manifest's test split has no disease ECGs, or bad options.
        ECGFormatError: an ECG file cannot be read.
    """
    from lasan.checkpoint import load_checkpoint
    from lasan.client.api import TritonScorer
    from lasan.train.evaluate_cli import split_seed_of
    from lasan.train.manifest import read_manifest
    from lasan.train.split import patient_split
    from lasan.train.synth import generate_cohort

    if args.bootstrap < 1 or args.normals < 1 or args.fresh_patients < 3:
        raise ConfigError("--bootstrap and --normals must be at least 1, --fresh-patients at least 3")
    ckpt = load_checkpoint(args.checkpoint)
    work = Path(args.work) if args.work else Path(args.out).resolve().parent / "targets_work"
    n_boot, seed = args.bootstrap, args.seed
    split_seed = split_seed_of(ckpt)
    test_rows = patient_split(read_manifest(args.data), seed=split_seed).test
    results: list[TargetResult] = []
    details: dict[str, Any] = {"url": args.url, "checkpoint": str(ckpt.path), "sha256": ckpt.sha256}
    with TritonScorer(args.url, timeout_s=args.timeout) as scorer:
        info = scorer.model_info
        classes, disease = tuple(info.classes), tuple(info.disease_classes)
        details["model"] = {"name": info.name, "version": info.version, "classes": list(classes)}
        y = np.array([classes.index(row.label) for row in test_rows])
        groups = np.array([row.patient_id for row in test_rows])
        records = _read(test_rows)
        log.info("scoring %d test ECGs through %s", len(records), args.url)
        served, flags = _score_all(scorer, records, disease)
        details["parity_with_in_process"] = _parity(ckpt, records, served)

        # 1. importance vs occlusion, through the server, on unseen disease ECGs.
        sick = np.isin(y, [classes.index(d) for d in disease])
        if not sick.any():
            raise ConfigError("the test split holds no disease ECGs; the importance target needs some")
        idx = np.nonzero(sick)[0]
        log.info("scoring %d disease ECGs x %d occluded leads through the server", len(idx), len(info.lead_order))
        occluded = np.stack(
            [_score_all(scorer, occluded_records(records[i], info.lead_order), disease)[0].probs for i in idx]
        )  # (n, L, C)
        probs_sick, imp_sick = served.probs[idx], served.importance[idx]
        drops = occlusion_drops(probs_sick, occluded, probs_sick.argmax(axis=1))
        rho = per_ecg_spearman(imp_sick, drops)
        est, lo, hi, n = _mean_ci(rho, groups[idx], n_boot, seed)
        results.append(
            TargetResult(
                "lead importance vs occlusion: mean per-ECG Spearman (unseen disease ECGs)",
                est,
                lo,
                hi,
                f">= {TARGETS['spearman']}",
                bool(est >= TARGETS["spearman"]),
                n,
                "patient bootstrap; ECGs",
            )
        )
        est, lo, hi, n = _mean_ci(imp_sick.max(axis=1), groups[idx], n_boot, seed)
        results.append(
            TargetResult(
                "lead importance: mean per-ECG maximum weight (unseen disease ECGs)",
                est,
                lo,
                hi,
                f">= {TARGETS['max_weight']}",
                bool(est >= TARGETS["max_weight"]),
                n,
                "patient bootstrap; ECGs",
            )
        )
        details["faithfulness"] = {"n_disease_ecgs": int(len(idx)), "n_undefined": int(np.isnan(rho).sum())}
        if served.aggregator is not None:
            rho_agg = per_ecg_spearman(served.aggregator[idx], drops)
            details["faithfulness"]["aggregator_weights_mean_spearman"] = float(np.nanmean(rho_agg))
            details["faithfulness"]["aggregator_weights_mean_max"] = float(served.aggregator[idx].max(axis=1).mean())

        # 2. calibration on the test split and on freshly generated patients.
        ece = ece_with_ci(y, served.probs, groups, n_boot, seed)
        details["ece_noise_floor"] = {"test": ece_noise_floor(served.probs, seed=seed)}
        results.append(
            TargetResult(
                "ECE, test split",
                ece["estimate"],
                ece["low"],
                ece["high"],
                f"<= {TARGETS['ece']}",
                bool(ece["estimate"] <= TARGETS["ece"]),
                len(y),
                "patient bootstrap; ECGs",
            )
        )
        fresh_dir = work / f"fresh_cohort_seed{args.fresh_seed}_n{args.fresh_patients}"
        manifest = fresh_dir / "manifest.csv"
        if not manifest.is_file():
            log.info("synthesising %d fresh patients (seed %d)", args.fresh_patients, args.fresh_seed)
            manifest = generate_cohort(fresh_dir, n_patients=args.fresh_patients, seed=args.fresh_seed)
        fresh_rows = [row for row in read_manifest(manifest) if not getattr(row, "external", False)]
        fresh, _ = _score_all(scorer, _read(fresh_rows), disease)
        fy = np.array([classes.index(row.label) for row in fresh_rows])
        fg = np.array([row.patient_id for row in fresh_rows])
        ece = ece_with_ci(fy, fresh.probs, fg, n_boot, seed)
        details["ece_noise_floor"]["fresh"] = ece_noise_floor(fresh.probs, seed=seed)
        results.append(
            TargetResult(
                f"ECE, freshly generated patients (seed {args.fresh_seed})",
                ece["estimate"],
                ece["low"],
                ece["high"],
                f"<= {TARGETS['ece']}",
                bool(ece["estimate"] <= TARGETS["ece"]),
                len(fy),
                "patient bootstrap; ECGs",
            )
        )
        details["fresh_cohort"] = {
            "patients": len(set(fg.tolist())),
            "ecgs": len(fy),
            "accuracy": float(np.mean(fresh.probs.argmax(axis=1) == fy)),
        }

        # 3. independent normals at the screening point, and screening sensitivity on test.
        spec = NormalsSpec(n=args.normals, seed=args.normals_seed)
        _, normal_flags = _score_all(
            scorer, simulate_normals(spec, args.normals_cache or work / "normals_cache"), disease
        )
        share = share_with_ci(~normal_flags.any(axis=1))
        results.append(
            TargetResult(
                "neurokit2 normals with no disease flagged at the screening point",
                share["share"],
                share["low"],
                share["high"],
                f">= {TARGETS['normals_no_disease']}",
                bool(share["share"] >= TARGETS["normals_no_disease"]),
                share["n"],
                "Wilson; ECGs",
            )
        )
        details["normals"] = {"spec": asdict(spec), **share}
        for k, d in enumerate(disease):
            pos = y == classes.index(d)
            cis = patient_bootstrap(
                cast(
                    Callable[[np.ndarray], dict[str, float]],
                    lambda i, pos=pos, k=k: {"s": float(flags[i][pos[i], k].mean()) if pos[i].any() else float("nan")},
                ),
                groups,
                n_boot,
                seed,
            )["s"]
            results.append(
                TargetResult(
                    f"screening sensitivity, test split, {d}",
                    cis.estimate,
                    cis.low,
                    cis.high,
                    f">= {TARGETS['screening_sensitivity']}",
                    bool(cis.estimate >= TARGETS["screening_sensitivity"]),
                    int(pos.sum()),
                    "patient bootstrap; ECGs",
                )
            )
    return results, details


def to_markdown(results: Sequence[TargetResult], details: dict[str, Any]) -> str:
    """The targets table (generated by ``lasan targets``; do not edit by hand)."""
    parity = details.get("parity_with_in_process", {})
    lines = [
        "# Issue 10 targets, measured on the served ensemble",
        "",
        "Generated by `lasan targets` against a running Triton server; do not edit by hand. "
        "What each number means: [docs/evaluation.md](../evaluation.md#targets-on-the-served-ensemble).",
        "",
        f"Model `{details.get('model', {}).get('name')}` version `{details.get('model', {}).get('version')}`, "
        f"checkpoint sha256 {str(details.get('sha256', ''))[:12]}….",
        "",
        "| target | measured | 95 % CI | bar | verdict | n | CI |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        verdict = "**MET**" if r.met else "**MISSED**"
        lines.append(
            f"| {r.name} | {r.measured:.3f} | {r.low:.3f} to {r.high:.3f} | {r.bar} | {verdict} | {r.n} | {r.how} |"
        )
    if parity:
        ok = max(parity["max_abs_diff_probabilities"], parity["max_abs_diff_lead_importance"]) <= parity["tolerance"]
        lines += [
            "",
            f"Served vs in-process (`ServedLASAN`) on the test ECGs: max |Δ probability| "
            f"{parity['max_abs_diff_probabilities']:.2e}, max |Δ lead_importance| "
            f"{parity['max_abs_diff_lead_importance']:.2e} (tolerance {parity['tolerance']:.0e}: "
            f"{'within' if ok else 'OUTSIDE'}).",
        ]
    faith = details.get("faithfulness", {})
    if "aggregator_weights_mean_spearman" in faith:
        lines += [
            "",
            f"For contrast, the paper's aggregator weights on the same ECGs: mean per-ECG Spearman "
            f"{faith['aggregator_weights_mean_spearman']:.3f}, mean maximum weight {faith['aggregator_weights_mean_max']:.3f}.",
        ]
    floor = details.get("ece_noise_floor") or {}
    if floor:
        parts = [f"{k} {v['mean']:.3f} ({v['p05']:.3f} to {v['p95']:.3f})" for k, v in floor.items()]
        lines += [
            "",
            "ECE that a perfectly calibrated model with the same confidences would show on the same number of "
            f"ECGs (sampling noise alone; mean, 5-95 %): {', '.join(parts)}. A bar below this floor cannot be "
            "shown met on a split this small.",
        ]
    fresh = details.get("fresh_cohort")
    if fresh:
        lines += [
            "",
            f"Fresh cohort: {fresh['ecgs']} ECGs of {fresh['patients']} new patients, arg-max accuracy "
            f"{fresh['accuracy']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from lasan.train.report import to_jsonable

    results, details = measure_targets(args)
    for r in results:
        print(r.line())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(results, details))
    payload = {"targets": [asdict(r) for r in results], **details}
    out.with_suffix(".json").write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    met = sum(r.met for r in results)
    print(f"{met} of {len(results)} targets met; written to {out}")
    return 0
