"""The experiment grid's numbers and its one Markdown table, with the paper's numbers beside ours.

:func:`analyse` turns test-split probabilities into AUROCs with patient-bootstrap 95 % CIs
(:func:`lasan.train.metrics.patient_bootstrap`, the evaluation report's resampling), paired
differences between rows, and lead-masking drops with paired CIs; :func:`render_markdown`
writes the table. Every verdict follows one rule, fixed before any number is seen
(:func:`direction_verdict`), so that no row is judged more kindly than another:

* an EFFECT the paper reports (B is better than A, masking X hurts class Y) is
  "reproduced" when our paired 95 % CI lies entirely on the paper's side of zero, and
  "not reproduced" otherwise (the why says: same direction but CI includes 0, or opposite);
* an absolute AUROC is "not comparable": ours come from a synthetic cohort, the paper's
  from 645 real patients; the why says only where the paper's value falls against our CI;
* a row the paper has no number or claim for is "not comparable".

The paper's numbers are those of the summary in ``/work/shared/seed/lasan-paper-summary.md``
(arXiv 2601.07124), quoted in :data:`PAPER`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lasan.train.masking import masking_contrast
from lasan.train.metrics import auroc, expected_calibration_error, macro_auroc, patient_bootstrap, summary_metrics

__all__ = ["PAPER", "LABELS", "Claim", "direction_verdict", "level_verdict", "analyse", "render_markdown"]

REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE = "reproduced", "not reproduced", "not comparable"

_STRATEGY = {"linear_probe": "linear probing", "finetune": "fine-tuning", "lp_ft": "LP-FT"}


def _label(name: str, short: bool = False) -> str:
    if name in LABELS:
        return SHORT[name] if short else LABELS[name]
    strategy = next((v for k, v in _STRATEGY.items() if name.endswith(k)), name)
    encoder = "HuBERT-ECG" if name.startswith("hubert_") else "built-in SSL encoder"
    if short:
        prefix = "HuBERT-ECG " if name.startswith("hubert_") else ""
        return f"{prefix}{'hybrid' if 'hybrid_' in name else 'FM alone'}, {strategy}"
    if "hybrid_" in name:
        return f"Hybrid LASAN ({encoder}), {strategy}"
    return f"FM alone: foundation encoder ({encoder}) + linear head, {strategy}"


LABELS: dict[str, str] = {
    "lasan": "LASAN",
    "plain_cnn": "Plain CNN (8 leads as channels, LASAN's widths)",
    "clinical_lr": "Clinical features + logistic regression",
}
SHORT: dict[str, str] = {"lasan": "LASAN", "plain_cnn": "plain CNN", "clinical_lr": "clinical features LR"}

# The paper's numbers (macro-AUROC unless said otherwise), as quoted by the summary.
PAPER: dict[str, str] = {
    "lasan": "0.911 (standalone LASAN)",
    "fm_linear_probe": "0.825 (mean of 4 foundation models, linear probing)",
    "fm_finetune": "0.904 (mean of 4 foundation models, fine-tuning)",
    "hybrid": "0.932-0.990 across 4 encoders (HuBERT-ECG best: 0.990; ARVC vs control 0.999, LQTS vs control 0.994)",
    "hubert_hybrid": "0.990 (HuBERT-ECG + LASAN; ARVC vs control 0.999, LQTS vs control 0.994)",
    "ft_vs_lp": "+0.079 (0.904 vs 0.825, mean of 4 foundation models)",
    "hybrid_vs_lasan": "+0.021 to +0.079 (hybrids 0.932-0.990 vs LASAN 0.911)",
    "hybrid_vs_fm": "hybrids 0.932-0.990 vs fine-tuned foundation models 0.904 (mean)",
    "lasan_vs_cnn": "no plain-CNN number; claimed mechanism: lead-aware attention beats leads-as-channels",
    "mask_V1-V3": "AUROC reduced 4.54 % for ARVC, 2.71 % for LQTS (relative or points: not stated)",
    "mask_lateral (I, V5, V6)": "AUROC reduced 2.60 % for LQTS (ARVC not given)",
    "contrast_V1-V3": "ARVC drop > LQTS drop (4.54 vs 2.71)",
    "contrast_lateral (I, V5, V6)": "lateral leads preferentially important for LQTS",
}


@dataclass(frozen=True)
class Claim:
    """A paired comparison ``a - b`` (macro-AUROC) and what the paper says about it."""

    a: str
    b: str
    paper_key: str | None  # key into PAPER, None: the paper has no number or claim
    direction: int = 1  # the paper's sign of a - b; 0: the paper states none


def _claims(runs: tuple[str, ...]) -> list[Claim]:
    claims = [Claim("lasan", "plain_cnn", "lasan_vs_cnn"), Claim("lasan", "clinical_lr", None, 0)]
    for prefix in ("", "hubert_"):
        for s in ("linear_probe", "finetune", "lp_ft"):
            claims.append(Claim(f"{prefix}hybrid_{s}", "lasan", "hybrid_vs_lasan"))
        claims.append(Claim(f"{prefix}fm_finetune", f"{prefix}fm_linear_probe", "ft_vs_lp"))
        claims.append(Claim(f"{prefix}fm_lp_ft", f"{prefix}fm_linear_probe", None, 0))
        claims.append(Claim(f"{prefix}fm_lp_ft", f"{prefix}fm_finetune", None, 0))
        claims.append(Claim(f"{prefix}hybrid_finetune", f"{prefix}fm_finetune", "hybrid_vs_fm"))
    return [c for c in claims if c.a in runs and c.b in runs]


def direction_verdict(ci: dict[str, Any], direction: int) -> tuple[str, str]:
    """Verdict and why for an effect whose paper direction is ``direction`` (+1, -1; 0 = none)."""
    est, lo, hi = (ci.get(k) for k in ("estimate", "low", "high"))
    if direction == 0:
        return NOT_COMPARABLE, "the paper reports no number for this comparison"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (est, lo, hi)):
        return NOT_COMPARABLE, "undefined on these data (a class is missing from the test split)"
    assert est is not None and lo is not None and hi is not None  # all numbers, checked above
    est, lo, hi = direction * est, direction * lo, direction * hi  # positive = the paper's side
    if lo > 0:
        return REPRODUCED, "same direction as the paper; the 95 % CI excludes 0"
    if hi < 0:
        return NOT_REPRODUCED, "opposite direction to the paper; the 95 % CI excludes 0"
    if abs(est) < 5e-4:
        return NOT_REPRODUCED, "no difference (the estimate rounds to 0.000; the 95 % CI includes 0)"
    if est > 0:
        return NOT_REPRODUCED, "same direction as the paper, but the 95 % CI includes 0: not resolved on this cohort"
    return NOT_REPRODUCED, "opposite direction to the paper; the 95 % CI includes 0"


def level_verdict(paper: tuple[float, float] | None, ci: dict[str, Any]) -> tuple[str, str]:
    """Absolute AUROCs are never comparable (synthetic vs real patients); say where the paper's value
    (or range ``(low, high)``) falls against our CI."""
    why = "absolute level: synthetic cohort vs the paper's 645 real patients"
    if paper is None:
        return NOT_COMPARABLE, "the paper reports no number for this model"
    lo, hi = ci.get("low"), ci.get("high")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return NOT_COMPARABLE, why
    p_lo, p_hi = paper
    text = f"{p_lo:.3f}" if p_lo == p_hi else f"range {p_lo:.3f}-{p_hi:.3f}"
    where = "above" if p_lo > hi else ("below" if p_hi < lo else "overlaps")
    return NOT_COMPARABLE, f"{why}; the paper's {text} {where if where == 'overlaps' else 'is ' + where} our CI"


def _paper_level(name: str) -> tuple[str | None, tuple[float, float] | None]:
    if name.startswith("hubert_hybrid_"):
        return PAPER["hubert_hybrid"], (0.990, 0.990)
    if name.startswith("hybrid_"):
        return PAPER["hybrid"], (0.932, 0.990)
    if name in ("lasan", "fm_linear_probe", "fm_finetune"):
        value = float(PAPER[name].split()[0])
        return PAPER[name], (value, value)
    return None, None


def _model_block(probs: np.ndarray, y: np.ndarray, groups: np.ndarray, classes: tuple[str, ...], n_boot: int, seed: int):
    cis = patient_bootstrap(lambda idx: summary_metrics(y[idx], probs[idx], classes), groups, n_boot, seed)
    return {"metrics": {k: ci.to_dict() for k, ci in cis.items()}, "ece": expected_calibration_error(y, probs)}


def _paired(a: np.ndarray, b: np.ndarray, y: np.ndarray, groups: np.ndarray, classes, n_boot: int, seed: int):
    def stat(idx: np.ndarray) -> dict[str, float]:
        yy = y[idx]
        out = {"macro_auroc": macro_auroc(yy, a[idx], classes) - macro_auroc(yy, b[idx], classes)}
        for k, c in enumerate(classes):
            out[f"auroc_{c}"] = auroc(yy == k, a[idx, k]) - auroc(yy == k, b[idx, k])
        return out

    return {k: ci.to_dict() for k, ci in patient_bootstrap(stat, groups, n_boot, seed).items()}


def _masking_block(base: np.ndarray, masked: np.ndarray, y, groups, classes, n_boot: int, seed: int):
    """Masked AUROC per class and its drop (unmasked - masked, positive = the group mattered), paired CIs."""

    def stat(idx: np.ndarray) -> dict[str, float]:
        yy = y[idx]
        out = {"macro_auroc": macro_auroc(yy, masked[idx], classes),
               "macro_drop": macro_auroc(yy, base[idx], classes) - macro_auroc(yy, masked[idx], classes)}
        for k, c in enumerate(classes):
            m = auroc(yy == k, masked[idx, k])
            out[f"auroc_{c}"] = m
            out[f"drop_{c}"] = auroc(yy == k, base[idx, k]) - m
        return out

    cis = {k: ci.to_dict() for k, ci in patient_bootstrap(stat, groups, n_boot, seed).items()}
    relative = {}
    for k, c in enumerate(classes):
        b = auroc(y == k, base[:, k])
        relative[c] = 100.0 * cis[f"drop_{c}"]["estimate"] / b if b and math.isfinite(b) else float("nan")
    return {"metrics": cis, "relative_drop_pct": relative}


def analyse(
    cfg: Any,
    arrays: dict[str, Any],
    probs: dict[str, dict[str, np.ndarray]],
    masked: dict[str, np.ndarray],
    infos: dict[str, dict[str, Any]],
    per_seed: dict[str, dict[str, dict[str, np.ndarray]]] | None = None,
) -> dict[str, Any]:
    """Every number of the grid (JSON-able after :func:`lasan.train.report.to_jsonable`).

    ``probs[row][split]`` are the row's probabilities (the mean over its training seeds);
    ``per_seed[row][seed][split]`` each seed's own, whose macro-AUROCs are reported alongside.
    """
    classes = tuple(cfg.lasan.classes)
    n_boot, seed = cfg.bootstrap, cfg.bootstrap_seed
    test = arrays["test"]
    y, groups = np.asarray(test.y), np.asarray(test.patient_ids)
    models: dict[str, Any] = {}
    for name, p in probs.items():
        block = _model_block(p["test"], y, groups, classes, n_boot, seed)
        if "external" in p and "external" in arrays:
            ext = arrays["external"]
            block["external"] = _model_block(p["external"], np.asarray(ext.y), np.asarray(ext.patient_ids),
                                             classes, n_boot, seed)
        paper_text, paper_value = _paper_level(name)
        verdict, why = level_verdict(paper_value, block["metrics"]["macro_auroc"])
        seeds = {
            seed: {f"{split}_macro_auroc": macro_auroc(np.asarray(arrays[split].y), sp[split], classes)
                   for split in sp if split in arrays}
            for seed, sp in (per_seed or {}).get(name, {}).items()
        }
        models[name] = {"label": _label(name), **block, "single_seed": seeds, "paper": paper_text,
                        "verdict": verdict, "why": why, "info": infos.get(name, {})}
    effects = []
    for claim in _claims(tuple(probs)):
        cis = _paired(probs[claim.a]["test"], probs[claim.b]["test"], y, groups, classes, n_boot, seed)
        verdict, why = direction_verdict(cis["macro_auroc"], claim.direction)
        effects.append({"a": claim.a, "b": claim.b,
                        "label": f"{_label(claim.a, True)} minus {_label(claim.b, True)}",
                        "metrics": cis, "paper": PAPER.get(claim.paper_key or "", None),
                        "verdict": verdict, "why": why})
    masking: dict[str, Any] = {}
    if masked:
        base = probs[cfg.masking_model]["test"]
        for group, mp in masked.items():
            block = _masking_block(base, mp, y, groups, classes, n_boot, seed)
            paper = PAPER.get(f"mask_{group}")
            target = {"V1-V3": "ARVC", "lateral (I, V5, V6)": "LQTS"}.get(group)
            if target and target in classes:
                verdict, why = direction_verdict(block["metrics"][f"drop_{target}"], 1)
                why = f"{target} AUROC drop: {why}"
            else:
                verdict, why = NOT_COMPARABLE, "the paper reports no number for this group"
            entry = {"leads": list(_group_leads(group, cfg)), **block, "paper": paper, "verdict": verdict, "why": why}
            first_second = {"V1-V3": ("ARVC", "LQTS"), "lateral (I, V5, V6)": ("LQTS", "ARVC")}.get(group)
            if first_second and set(first_second) <= set(classes):
                contrast = masking_contrast(base, mp, y, groups, classes, *first_second, n_boot=n_boot, seed=seed)
                c_verdict, c_why = direction_verdict(contrast, 1)
                entry["contrast"] = {"first": first_second[0], "second": first_second[1], "ci": contrast,
                                     "paper": PAPER[f"contrast_{group}"], "verdict": c_verdict, "why": c_why}
            masking[group] = entry
    return {
        "schema": "lasan-experiment-grid/1",
        "label": cfg.label,
        "classes": list(classes),
        "bootstrap": {"n": n_boot, "seed": seed, "level": 0.95, "unit": "patient"},
        "models": models,
        "effects": effects,
        "masking": {"model": cfg.masking_model, "groups": masking},
        "hubert_ecg": _hubert_note(cfg),
    }


def _group_leads(group: str, cfg: Any) -> tuple[str, ...]:
    from lasan.train.masking import LEAD_GROUPS

    return tuple(lead for lead in LEAD_GROUPS[group] if lead in cfg.lasan.input.leads)


def _hubert_note(cfg: Any) -> str:
    if cfg.hubert_ecg_path:
        return f"HuBERT-ECG rows ran with the local weights in {cfg.hubert_ecg_path} (CC BY-NC 4.0)"
    return ("not run: no local HuBERT-ECG weights are configured (foundation.hubert_ecg_path is null), and "
            "nothing is downloaded at run time; the paper's best model (HuBERT-ECG + LASAN, 0.990) has no row of ours")


# ---------------------------------------------------------------- Markdown


def _f(v: Any, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    text = f"{v:+.3f}" if signed else f"{v:.3f}"
    return text.replace("-0.000", "0.000").replace("+0.000", "0.000")


def _ci(m: dict[str, Any] | None, signed: bool = False) -> str:
    if not m:
        return "n/a"
    return f"{_f(m.get('estimate'), signed)} ({_f(m.get('low'), signed)} to {_f(m.get('high'), signed)})"


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:+.1f} %"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def table_lines(results: dict[str, Any]) -> list[str]:
    """The one table: models, paired effects, lead masking (each row: ours, the paper's, verdict, why)."""
    classes = results["classes"]
    has_ext = any("external" in m for m in results["models"].values())
    head = ["Row", "Ours: macro-AUROC (95 % CI)", *classes, "External site macro-AUROC", "Paper", "Verdict", "Why"]
    lines = [_row(*head), _row(*["---"] * len(head))]
    sep = ["", "", *[""] * len(classes), "", "", "", ""]

    lines.append(_row("**Models (test split)**", *sep[1:]))
    for m in results["models"].values():
        met = m["metrics"]
        ext = _ci(m["external"]["metrics"]["macro_auroc"]) if "external" in m else ("n/a" if has_ext else "no external site")
        single = [v.get("test_macro_auroc") for v in (m.get("single_seed") or {}).values()]
        single = [v for v in single if v is not None and math.isfinite(v)]
        seeds = f"; single seeds {_f(min(single))}-{_f(max(single))}" if len(single) > 1 else ""
        lines.append(_row(m["label"], _ci(met["macro_auroc"]) + seeds,
                          *(_f(met[f"auroc_{c}"]["estimate"]) for c in classes),
                          ext, m["paper"] or "-", m["verdict"], m["why"]))
    if not any(n.startswith("hubert_") for n in results["models"]):
        lines.append(_row("HuBERT-ECG + LASAN hybrid (the paper's best)", "not run", *["-"] * len(classes), "-",
                          PAPER["hubert_hybrid"], NOT_COMPARABLE, results["hubert_ecg"]))

    lines.append(_row("**Paired differences (A minus B, same test patients)**", *sep[1:]))
    for e in results["effects"]:
        met = e["metrics"]
        lines.append(_row(e["label"], _ci(met["macro_auroc"], True),
                          *(_f(met[f"auroc_{c}"]["estimate"], True) for c in classes), "-",
                          e["paper"] or "-", e["verdict"], e["why"]))

    mk = results["masking"]
    if mk["groups"]:
        label = results["models"].get(mk["model"], {}).get("label", mk["model"])
        lines.append(_row(f"**Lead masking on {label}: AUROC with the group zeroed; drop [paired 95 % CI] = "
                          "relative drop (positive = the group mattered)**",
                          *sep[1:]))
        for group, g in mk["groups"].items():
            met = g["metrics"]
            cells = [
                f"{_f(met[f'auroc_{c}']['estimate'])}; drop {_f(met[f'drop_{c}']['estimate'], True)} "
                f"[{_f(met[f'drop_{c}']['low'], True)}, {_f(met[f'drop_{c}']['high'], True)}] = "
                f"{_pct(g['relative_drop_pct'][c])}"
                for c in classes
            ]
            lines.append(_row(f"{group} zeroed ({', '.join(g['leads'])})", _ci(met["macro_auroc"]), *cells, "-",
                              g["paper"] or "-", g["verdict"], g["why"]))
            if "contrast" in g:
                c = g["contrast"]
                lines.append(_row(f"{group} zeroed: {c['first']} drop minus {c['second']} drop", _ci(c["ci"], True),
                                  *["-"] * len(classes), "-", c["paper"], c["verdict"], c["why"]))
    return lines


def _setup_lines(results: dict[str, Any]) -> list[str]:
    cfg, cohort = results["config"], results["cohort"]
    splits = cohort["splits"]
    parts = ", ".join(f"{n} {s['ecgs']} ECGs / {s['patients']} patients" for n, s in splits.items())
    lasan = cfg["lasan"]
    tr, ft = cfg["training"], cfg["foundation"]["training"]
    pre = cfg["foundation"]["pretrain"]
    origin = "synthetic cohort (`lasan synth`" + (
        f", {cohort['synth'].get('patients')} patients, seed {cohort['synth'].get('seed')})" if "synth" in cohort else ")"
    ) if cohort["synthetic"] else f"manifest {cohort['manifest']}"
    return [
        f"- Data: {origin}; patient-level split (seed {cohort['split_seed']}): {parts}.",
        f"- LASAN: CNN {lasan['cnn_channels']}, d_model {lasan['d_model']}, pool {lasan['pool']} "
        f"(the paper's architecture at the demo's widths); max epochs {tr['epochs']}, patience {tr['patience']}, "
        f"lr {tr['lr']:g}. The plain CNN uses the same widths and training settings.",
        f"- Foundation encoder: the built-in compact CNN ({cfg['foundation']['encoder']['options']}), "
        f"pretrained self-supervised (masked-segment reconstruction, epochs: {pre['epochs'] if pre else 0}) on the "
        "training ECGs once, then used under each strategy with a linear head alone (\"FM alone\") or through the "
        f"hybrid gate with LASAN; max epochs {ft['epochs']}, LP-FT frozen for the first "
        f"{cfg['foundation']['lp_epochs']}, encoder lr after unfreezing {ft['encoder_lr'] or ft['lr'] / 10:g}.",
        f"- Training seeds {cfg['seeds']}: every trained row is trained once per seed and scored with the mean of "
        "its seeds' probabilities (the single-seed macro-AUROC range is shown beside it); lead masking likewise "
        "averages the seeds' masked probabilities. The clinical-feature model is deterministic (one fit).",
        f"- CIs: {results['bootstrap']['n']} patient-bootstrap replicates (seed {results['bootstrap']['seed']}); "
        "differences and masking drops are paired (the same resampled patients for both sides).",
        f"- HuBERT-ECG: {results['hubert_ecg']}.",
    ]


def _glance_lines(results: dict[str, Any]) -> list[str]:
    """The paper's headline directions, each answered by the table row that tests it (or "not run")."""
    effects = {(e["a"], e["b"]): e for e in results["effects"]}
    groups = results["masking"]["groups"]
    questions = [
        ("Hybrid (fine-tuned; the other strategies are in the table) > LASAN?", effects.get(("hybrid_finetune", "lasan"))),
        ("LASAN > plain CNN?", effects.get(("lasan", "plain_cnn"))),
        ("Fine-tuning > linear probing (foundation encoder alone)?", effects.get(("fm_finetune", "fm_linear_probe"))),
        ("Zeroing V1-V3 hurts ARVC more than LQTS?", (groups.get("V1-V3") or {}).get("contrast")),
        ("Zeroing the lateral leads hurts LQTS more than ARVC?", (groups.get("lateral (I, V5, V6)") or {}).get("contrast")),
    ]
    lines = []
    for question, row in questions:
        if row is None:
            lines.append(f"- {question} not run")
            continue
        ci = row.get("ci") or row["metrics"]["macro_auroc"]
        lines.append(f"- {question} {_ci(ci, True)}: **{row['verdict']}** ({row['why']}).")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """``docs/experiments.md``: how it was made, the one table, how to read it."""
    label = results.get("label")
    timing = results["timing"]
    lines = ["# The paper's experiment grid on our cohort", ""]
    if label:
        lines += [f"> **{label}**", ""]
    lines += [
        f"Generated by `{results['command']}` ({timing['threads']} torch thread(s)); training and scoring "
        f"the rows took {sum(v or 0.0 for v in timing['rows_s'].values()) / 60:.1f} min (this invocation "
        f"{timing['total_s'] / 60:.1f} min; cached rows are reused). Do not edit: regenerate with `make experiments` "
        "(`lasan experiments --config configs/experiments.yaml --out work/experiments --docs`); an interrupted run "
        "resumes from `work/experiments/runs/`. Every number, with every CI, is in `experiments.json` beside the table.",
        "",
    ]
    if results["cohort"]["synthetic"]:
        lines += [
            "**Our data are synthetic; the paper's are 1,344 ECGs of 645 real patients from 13 Canadian centres.** "
            "Absolute AUROCs are therefore never comparable and are marked so. What can be compared is the "
            "*direction* of each effect the paper reports; those rows say reproduced or not reproduced by one rule: "
            "reproduced only when our paired 95 % CI lies entirely on the paper's side of zero.",
            "",
        ]
    lines += ["## Setup", "", *_setup_lines(results), "", "## The paper's directions at a glance", ""]
    lines += [*_glance_lines(results), "", "## Results", "", *table_lines(results), ""]
    lines += [
        "## How to read it",
        "",
        "- Per-class columns are one-vs-rest AUROCs (point estimates; their CIs are in the JSON). In paired rows they "
        "are per-class differences; in masking rows, the AUROC with the group zeroed, its drop from the unmasked "
        "model with a paired CI, and the relative drop in %.",
        "- Masking zeroes the group in the preprocessed (per-lead z-scored) input, i.e. the lead carries no "
        "deflection, as `lasan evaluate` does. The paper's masking percentages do not say whether they are relative "
        "or absolute; we give both.",
        "- The paper's plain-CNN and clinical-feature models, LP-FT, and the limb / precordial masking groups have no "
        "number in the paper summary we work from: those rows are ours only.",
        "- Our foundation encoder is pretrained on this cohort's own training ECGs only, not on a large "
        "ECG archive like the paper's four foundation models, so linear probing on its frozen features is expected "
        "to be weak; the fine-tuning vs linear-probing row tests the paper's direction, not its size.",
        "- The hybrid rows use the same built-in encoder; the paper's hybrids use HuBERT-ECG, GAUC-Net, Ensemble ECG "
        "and R54-net, none of which is available offline here.",
        "- The external-site column scores the manifest's `holdout=external` ECGs (never used for training or "
        "model selection) when the cohort has them.",
        "",
    ]
    return "\n".join(lines)
