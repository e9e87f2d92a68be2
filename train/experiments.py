"""``lasan experiments --config configs/experiments.yaml --out DIR [--docs]``: the paper's grid.

On one cohort and one patient-level split (the ``lasan train`` split, same function and
seed) it trains and scores every row of :data:`lasan.train.experiment_config.EXPERIMENTS`:
LASAN, the plain CNN, the clinical-feature logistic regression, the foundation encoder
alone under linear probing / fine-tuning / LP-FT, and the hybrid (encoder + LASAN, gated)
under the same three strategies; then zeroes each lead group on LASAN. The numbers, with
patient-bootstrap CIs and the paper's beside them, go to ``DIR/experiments.json`` and
``DIR/experiments.md`` (and ``docs/experiments.md`` with ``--docs``), built by
:mod:`lasan.train.experiment_table`.

Resumable: each row keeps its model and test predictions in ``DIR/runs/<row>/`` with a
hash of its settings and of the cohort manifest; a rerun reuses every row whose hash
matches and continues an interrupted LASAN / hybrid / foundation training from its
per-epoch state. A row whose settings changed is retrained from scratch.

The foundation encoder is the project's built-in self-supervised encoder, pretrained by
:func:`lasan.train.pretrain.pretrain_encoder` exactly as ``lasan train`` pretrains a
hybrid's (same seed, same training ECGs: the same weights), so every transfer strategy
starts from one pretrained encoder. HuBERT-ECG rows run only with a local weights folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from dataclasses import MISSING, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lasan.errors import ConfigError
from lasan.models import HybridConfig, build_model
from lasan.models.config import EncoderSpec
from lasan.models.encoders import build_foundation_encoder
from lasan.preprocessing import InputSpec
from lasan.train.dataset import ECGArrays, load_arrays
from lasan.train.experiment_config import GridConfig, load_grid_config, spec_digest
from lasan.train.masking import LEAD_GROUPS, predict

__all__ = [
    "configure",
    "run",
    "run_grid",
    "Cohort",
    "FoundationClassifier",
    "FoundationProbeConfig",
    "RESULTS_JSON",
    "RESULTS_MD",
]

log = logging.getLogger(__name__)

RESULTS_JSON = "experiments.json"
RESULTS_MD = "experiments.md"
DOCS_PATH = Path("docs") / "experiments.md"
_PRED = "predictions.npz"
_RESULT = "result.json"
_SPEC = "spec.json"
_GENERATOR = "generator.json"  # in the cohort folder: the generator digest that wrote it


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiments YAML (see configs/experiments.yaml)")
    parser.add_argument("--out", default=None, help="run folder (overrides the config's output)")
    parser.add_argument("--docs", action="store_true", help=f"also write the table to {DOCS_PATH}")
    parser.add_argument("--docs-path", default=str(DOCS_PATH), help=f"where --docs writes (default {DOCS_PATH})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def run(args: argparse.Namespace) -> int:
    cfg = load_grid_config(args.config)
    if args.out:
        cfg = cfg.with_output(args.out)
    docs = Path(args.docs_path) if args.docs else None
    results = run_grid(cfg, docs=docs, progress=not args.no_progress, command=_command(args))
    print(f"table written to {cfg.out / RESULTS_MD}" + (f" and {docs}" if docs else ""))
    print(f"every number in {cfg.out / RESULTS_JSON} ({results['timing']['total_s']:.0f} s)")
    return 0


def _command(args: argparse.Namespace) -> str:
    parts = ["lasan experiments", f"--config {args.config}"]
    if args.out:
        parts.append(f"--out {args.out}")
    if args.docs:
        parts.append("--docs")
    return " ".join(parts)


# ---------------------------------------------------------------- the foundation encoder alone


@dataclass(frozen=True)
class FoundationProbeConfig:
    """What the trainer reads from a model with a foundation encoder: its encoder spec and input."""

    encoder: EncoderSpec
    input: InputSpec
    classes: tuple[str, ...]


class FoundationClassifier(nn.Module):
    """The foundation encoder with one linear layer on its features: the paper's "foundation
    model + classification head" row, without LASAN.

    Returns the model contract's triple ``(logits (B, C), lead_weights (B, L), attention
    (B, 0, 1, L, L))``: it has no notion of a lead, so its lead weights are uniform (an
    aggregator-entropy term on them is a constant without gradient) and its attention is empty.

    ``kind = "hybrid"`` because :mod:`lasan.train.trainer` applies the transfer strategies
    (freezing, the encoder's learning rate) to any model of that kind with a ``foundation``
    and ``set_foundation_trainable``; this model has both, with HybridLASAN's semantics.
    """

    kind = "hybrid"

    def __init__(self, cfg: FoundationProbeConfig, foundation: nn.Module):
        super().__init__()
        self.config = cfg
        self.foundation = foundation
        self.head = nn.Linear(int(cast(int, foundation.out_dim)), len(cfg.classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n_leads = x.shape[0], x.shape[1]
        weights = x.new_full((b, n_leads), 1.0 / n_leads)  # (B, L)
        return self.head(self.foundation(x)), weights, x.new_zeros(b, 0, 1, n_leads, n_leads)

    def set_foundation_trainable(self, trainable: bool) -> None:
        for p in self.foundation.parameters():
            p.requires_grad_(trainable)
        self.foundation.train(trainable and self.training)  # frozen = BatchNorm statistics fixed too


# ---------------------------------------------------------------- cohort


@dataclass(frozen=True)
class Cohort:
    manifest: Path
    digest: str  # sha256 of manifest.csv: a regenerated cohort invalidates every cached row
    synthetic: bool
    arrays: dict[str, ECGArrays]  # train, val, test (+ external when the manifest has that site)
    summary: dict[str, Any]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _generator_digest() -> str:
    """Hash of the cohort generator's source (``lasan.train.synth*``): which code wrote a cohort."""
    import lasan.train as package

    h = hashlib.sha256()
    for path in sorted(Path(package.__file__).parent.glob("synth*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def prepare_cohort(cfg: GridConfig, progress: bool = False) -> Cohort:
    """Synthesise the cohort if needed (``lasan synth``, the command a user runs), split, preprocess.

    Raises:
        ConfigError: the manifest is missing or invalid, or ``lasan synth`` failed.
    """
    from lasan.train.manifest import read_manifest
    from lasan.train.split import patient_split

    if cfg.data.manifest is not None:
        manifest = Path(cfg.data.manifest)
        if not manifest.is_file():
            raise ConfigError(f"data.manifest {manifest} does not exist; write one or use data.synth")
    else:
        manifest = cfg.cohort_dir / "manifest.csv"
        stamp = cfg.cohort_dir / _GENERATOR
        generator = _generator_digest()
        current = stamp.is_file() and json.loads(stamp.read_text()).get("digest") == generator
        if manifest.is_file() and not current and cfg.cohort_dir == cfg.out / "cohort":
            # The grid's own cohort, written by an older generator: the table must describe today's cohort.
            log.warning("the cohort generator changed since %s was written: regenerating it", cfg.cohort_dir)
            shutil.rmtree(cfg.cohort_dir)
        if manifest.is_file():
            log.info("reusing the cohort in %s (delete the folder to regenerate it)", manifest.parent)
            if not current:
                log.warning("%s may come from an older cohort generator; delete it to regenerate", cfg.cohort_dir)
        else:
            from lasan.cli import main as lasan_main

            synth = cfg.data.synth or {}
            argv = ["synth", "--out", str(manifest.parent), "--patients", str(int(synth.get("patients", 300))),
                    "--seed", str(int(synth.get("seed", 0)))]
            log.info("synthesising the cohort: lasan %s", " ".join(argv))
            if lasan_main(argv) != 0 or not manifest.is_file():
                raise ConfigError(f"lasan synth did not write {manifest}")
            stamp.write_text(json.dumps({"digest": generator}))
    rows = list(read_manifest(manifest))
    synthetic = bool(rows) and all(str(r.get("synthetic", "") or "").lower() in ("1", "true", "yes") for r in rows)
    split = patient_split(rows, seed=cfg.data.split_seed)
    spec, classes = cfg.lasan.input, tuple(cfg.lasan.classes)
    names = ["train", "val", "test"] + (["external"] if getattr(split, "external", ()) else [])
    arrays = {n: load_arrays(split.rows(n), spec, classes, cfg.cache_dir, manifest.parent, progress) for n in names}
    summary = {
        "manifest": str(manifest),
        "synthetic": synthetic,
        "split_seed": cfg.data.split_seed,
        "splits": {
            n: {"ecgs": len(a), "patients": len(set(a.patient_ids)), "per_label": a.counts()} for n, a in arrays.items()
        },
    }
    if cfg.data.synth is not None:
        summary["synth"] = {k: v for k, v in cfg.data.synth.items() if k != "out"}
    return Cohort(manifest, _file_sha256(manifest), synthetic, arrays, summary)


# ---------------------------------------------------------------- per-row cache


def _prepare_run_dir(run_dir: Path, digest: str) -> None:
    """Create ``run_dir``; wipe it first when it holds a row trained with other settings or data."""
    spec_file = run_dir / _SPEC
    if spec_file.is_file() and json.loads(spec_file.read_text()).get("digest") != digest:
        log.warning("%s was made with other settings or another cohort: retraining it", run_dir.name)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps({"digest": digest}))


def _load_cached(run_dir: Path, digest: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    result = run_dir / _RESULT
    if not result.is_file() or not (run_dir / _PRED).is_file():
        return None
    info = json.loads(result.read_text())
    if info.get("digest") != digest:
        return None
    with np.load(run_dir / _PRED) as data:
        return {k: data[k] for k in data.files}, info


def _store(run_dir: Path, digest: str, probs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    tmp = run_dir / "predictions.tmp.npz"
    np.savez(tmp, **probs)
    tmp.replace(run_dir / _PRED)
    (run_dir / _RESULT).write_text(json.dumps({"digest": digest, **info}, indent=2, default=str))


def _score(model: nn.Module, cohort: Cohort) -> dict[str, np.ndarray]:
    return {n: predict(model, a.x).probs for n, a in cohort.arrays.items() if n in ("test", "external")}


# ---------------------------------------------------------------- rows


def _settings(obj: Any) -> Any:
    """A dataclass as a dict WITHOUT the fields left at their defaults (recursively).

    So a row's hash changes when a setting it uses changes, but not when another engineer adds
    a new, default-off option to TrainingConfig or LASANConfig (the cached result is still what
    that code computes). The price: changing a default in code does not invalidate the cache.
    """
    if is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if f.default is not MISSING:
                default: Any = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                default = MISSING
            if default is MISSING or value != default:
                out[f.name] = _settings(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [_settings(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _settings(v) for k, v in obj.items()}
    return obj


def _row_digest(cfg: GridConfig, name: str, cohort: Cohort) -> str:
    """Hash of everything a row's result depends on (``cfg`` carries the row's training seed)."""
    base: dict[str, Any] = {"row": name, "cohort": cohort.digest, "split_seed": cfg.data.split_seed}
    if name == "lasan" or "hybrid_" in name:
        tcfg = cfg.train_config(name, cohort.manifest)
        base["settings"] = _settings({"model": tcfg.model, "training": tcfg.training, "pretrain": tcfg.pretrain})
    elif name == "plain_cnn":
        base["settings"] = _settings({"lasan": cfg.lasan, "training": cfg.training})
    elif name == "clinical_lr":
        base["settings"] = _settings({"input": cfg.lasan.input})
    else:
        base["settings"] = _settings({"encoder": cfg.encoder_for(name), "lasan": cfg.lasan, "fusion": cfg.fusion_dim,
                                      "training": cfg.foundation_training, "pretrain": cfg.pretrain})
    return spec_digest(base)


def _train_with_lasan_train(cfg: GridConfig, name: str, cohort: Cohort, run_dir: Path, progress: bool) -> tuple:
    """LASAN and hybrid rows: ``lasan train``'s own function, so the checkpoint is a product checkpoint."""
    from lasan.checkpoint import load_checkpoint
    from lasan.train.cli import CHECKPOINT_NAME, STATE_NAME, train_from_config

    tcfg = cfg.train_config(name, cohort.manifest, run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        resume = (run_dir / STATE_NAME).is_file()
        if resume:
            log.info("%s: resuming the interrupted training", name)
        train_from_config(tcfg, resume=resume, progress=progress)
    ckpt = load_checkpoint(ckpt_path)
    trained_test = ckpt.info.data_summary.get("splits", {}).get("test", {}).get("ecgs")
    if trained_test is not None and int(trained_test) != len(cohort.arrays["test"]):
        raise ConfigError(
            f"{name}: lasan train held out {trained_test} test ECGs but the grid scores {len(cohort.arrays['test'])}; "
            f"the split functions disagree, delete {run_dir} and rerun"
        )
    metrics = ckpt.info.metrics
    info = {"checkpoint": str(ckpt_path), "best_epoch": metrics.get("best_epoch"),
            "epochs_run": metrics.get("epochs_run"),
            "val_macro_auroc": (metrics.get("validation") or {}).get("macro_auroc")}
    return ckpt.model, info


def _train_plain_cnn(cfg: GridConfig, cohort: Cohort, run_dir: Path) -> tuple:
    from lasan.train.baselines import CNNTrainConfig, PlainCNN, train_plain_cnn

    lc, tc = cfg.lasan, cfg.training
    torch.manual_seed(tc.seed)
    model = PlainCNN(lc.n_leads, len(lc.classes), lc.cnn_channels, lc.kernel_size, lc.pool, lc.head_hidden, lc.dropout)
    weights = run_dir / "model.pt"
    info: dict[str, Any] = {"architecture": "8 leads as channels, LASAN's CNN widths, no lead attention"}
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        train_cfg = CNNTrainConfig(epochs=tc.epochs, batch_size=tc.batch_size, lr=tc.lr, weight_decay=tc.weight_decay,
                                   gamma=tc.focal_gamma, patience=tc.patience, seed=tc.seed, augment=tc.augment,
                                   fs=lc.input.fs)
        tr, va = cohort.arrays["train"], cohort.arrays["val"]
        info.update(train_plain_cnn(model, tr.x, tr.y, va.x, va.y, tuple(lc.classes), train_cfg))
        torch.save(model.state_dict(), weights)
    return model.eval(), info


def _clinical_lr(cfg: GridConfig, cohort: Cohort) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from lasan.train.baselines import fit_logistic
    from lasan.train.clinical_features import FEATURE_NAMES, feature_matrix

    spec = cfg.lasan.input
    feats = {n: feature_matrix(a.x, spec.fs, spec.leads) for n, a in cohort.arrays.items() if n != "val"}
    model = fit_logistic(feats["train"], cohort.arrays["train"].y, len(cfg.lasan.classes))
    probs = {n: model.predict_proba(f) for n, f in feats.items() if n != "train"}
    return probs, {"features": list(FEATURE_NAMES), "unmeasurable_fraction_test": float(np.mean(~np.isfinite(feats["test"])))}


def _pretrained_builtin(cfg: GridConfig, cohort: Cohort, progress: bool) -> dict[str, torch.Tensor]:
    """The builtin encoder after self-supervised pretraining, built and pretrained as ``lasan train``
    does for a hybrid (seed, model construction order, data), cached in ``runs/foundation_pretrained/seed<k>``."""
    from lasan.train.pretrain import pretrain_encoder
    from lasan.train.trainer import resolve_device, seed_everything

    digest = spec_digest({"cohort": cohort.digest, "encoder": _settings(cfg.encoder), "lasan": _settings(cfg.lasan),
                          "fusion": cfg.fusion_dim, "training": _settings(cfg.foundation_training),
                          "pretrain": _settings(cfg.pretrain)})
    tc = cfg.foundation_training
    run_dir = cfg.out / "runs" / "foundation_pretrained" / f"seed{tc.seed}"
    _prepare_run_dir(run_dir, digest)
    path = run_dir / "encoder.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    seed_everything(tc.seed)
    hybrid = build_model(HybridConfig(lasan=cfg.lasan, encoder=cfg.encoder_for("fm_finetune"), fusion_dim=cfg.fusion_dim))
    encoder = cast(nn.Module, hybrid.foundation)
    losses: list[float] = []
    if cfg.pretrain is not None:
        losses = pretrain_encoder(encoder, cohort.arrays["train"].x, cfg.pretrain, seed=tc.seed,
                                  device=resolve_device(tc.device), progress=progress)
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    torch.save(state, path)
    (run_dir / "pretrain_loss.json").write_text(json.dumps(losses))
    return state


def _train_foundation_alone(cfg: GridConfig, name: str, cohort: Cohort, run_dir: Path, progress: bool) -> tuple:
    from lasan.train.trainer import resolve_device, seed_everything, train_model

    spec = cfg.encoder_for(name)
    tc = cfg.foundation_training
    seed_everything(tc.seed)
    encoder = build_foundation_encoder(spec, cfg.lasan.input)
    if spec.kind == "builtin":
        encoder.load_state_dict(_pretrained_builtin(cfg, cohort, progress))
    seed_everything(tc.seed)
    model: nn.Module = FoundationClassifier(FoundationProbeConfig(spec, cfg.lasan.input, tuple(cfg.lasan.classes)), encoder)
    weights = run_dir / "model.pt"
    info: dict[str, Any] = {"architecture": "foundation encoder + one linear layer", "strategy": spec.strategy}
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.eval(), info
    state = run_dir / "train_state.pt"
    result = train_model(model, cohort.arrays["train"], cohort.arrays["val"], tc, state_path=state,
                         resume=state.is_file(), device=resolve_device(tc.device), progress=progress)
    model = result.model.cpu()
    torch.save(model.state_dict(), weights)
    info.update({"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                 "val_macro_auroc": result.best_val_auroc})
    return model.eval(), info


def _run_dir(cfg: GridConfig, name: str, seed: int | None) -> Path:
    return cfg.out / "runs" / name / (f"seed{seed}" if seed is not None else "")


def _run_row(cfg: GridConfig, name: str, cohort: Cohort, progress: bool, run_dir: Path):
    """One training seed of one row (``cfg`` = :meth:`GridConfig.for_seed`): cached or trained, then scored."""
    digest = _row_digest(cfg, name, cohort)
    cached = _load_cached(run_dir, digest)
    if cached is not None:
        log.info("%s: cached result reused (%s)", name, run_dir)
        return cached
    _prepare_run_dir(run_dir, digest)
    started = time.monotonic()
    log.info("%s: training (%s)", name, run_dir)
    if name == "clinical_lr":
        probs, info = _clinical_lr(cfg, cohort)
    else:
        if name == "lasan" or "hybrid_" in name:
            model, info = _train_with_lasan_train(cfg, name, cohort, run_dir, progress)
        elif name == "plain_cnn":
            model, info = _train_plain_cnn(cfg, cohort, run_dir)
        else:
            model, info = _train_foundation_alone(cfg, name, cohort, run_dir, progress)
        probs = _score(model, cohort)
    info["seconds"] = round(time.monotonic() - started, 1)
    _store(run_dir, digest, probs, info)
    return probs, {"digest": digest, **info}


def _run_seeds(cfg: GridConfig, name: str, cohort: Cohort, progress: bool):
    """A row over all training seeds: the mean of the seeds' probabilities, and each seed's own."""
    seeds: tuple[int | None, ...] = (None,) if name == "clinical_lr" else cfg.seeds  # deterministic: one fit
    per_seed: dict[str, dict[str, np.ndarray]] = {}
    infos: dict[str, Any] = {}
    for seed in seeds:
        cfg_s = cfg if seed is None else cfg.for_seed(seed)
        probs, info = _run_row(cfg_s, name, cohort, progress, _run_dir(cfg, name, seed))
        per_seed[str(seed)], infos[str(seed)] = probs, info
    mean = {split: np.mean([p[split] for p in per_seed.values()], axis=0) for split in next(iter(per_seed.values()))}
    seconds = sum(float(i.get("seconds") or 0.0) for i in infos.values())
    return mean, per_seed, {"seeds": infos, "seconds": round(seconds, 1)}


def _run_masking(cfg: GridConfig, cohort: Cohort) -> dict[str, np.ndarray]:
    """Test probabilities of the masking model with each lead group zeroed, the mean over the training
    seeds as for the unmasked row (key ``g<i>`` = the i-th configured group)."""
    per_seed = [_mask_one_seed(cfg.for_seed(seed), cohort, _run_dir(cfg, f"masking_{cfg.masking_model}", seed),
                               _run_dir(cfg, cfg.masking_model, seed)) for seed in cfg.seeds]
    return {k: np.mean([m[k] for m in per_seed], axis=0) for k in per_seed[0]}


def _mask_one_seed(cfg: GridConfig, cohort: Cohort, run_dir: Path, model_dir: Path) -> dict[str, np.ndarray]:
    from lasan.checkpoint import load_checkpoint
    from lasan.train.cli import CHECKPOINT_NAME

    digest = spec_digest({"model": _row_digest(cfg, cfg.masking_model, cohort), "groups": list(cfg.masking_groups)})
    cached = _load_cached(run_dir, digest)
    if cached is not None:
        return cached[0]
    _prepare_run_dir(run_dir, digest)
    model = load_checkpoint(model_dir / CHECKPOINT_NAME).model
    leads = tuple(cfg.lasan.input.leads)
    x = cohort.arrays["test"].x
    masked = {}
    for i, group in enumerate(cfg.masking_groups):
        idx = tuple(leads.index(lead) for lead in LEAD_GROUPS[group] if lead in leads)
        masked[f"g{i}"] = predict(model, x, mask=idx).probs
    _store(run_dir, digest, masked, {"groups": list(cfg.masking_groups)})
    return masked


def run_grid(cfg: GridConfig, docs: Path | None = None, progress: bool = False, command: str = "") -> dict[str, Any]:
    """Run (or resume) every configured row, then write ``experiments.json`` / ``experiments.md``.

    Returns the results dict written to JSON.

    Raises:
        ConfigError: invalid data or settings; ECGFormatError: an ECG cannot be read.
    """
    from lasan.train.experiment_table import analyse, render_markdown
    from lasan.train.report import to_jsonable

    started = time.monotonic()
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.training.num_threads:
        torch.set_num_threads(int(cfg.training.num_threads))
    cohort = prepare_cohort(cfg, progress)
    probs: dict[str, dict[str, np.ndarray]] = {}
    per_seed: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    infos: dict[str, dict[str, Any]] = {}
    for name in cfg.runs():
        probs[name], per_seed[name], infos[name] = _run_seeds(cfg, name, cohort, progress)
    masked_by_key = _run_masking(cfg, cohort) if cfg.masking_groups else {}
    masked = {group: masked_by_key[f"g{i}"] for i, group in enumerate(cfg.masking_groups)}
    results = analyse(cfg, cohort.arrays, probs, masked, infos, per_seed)
    results["cohort"] = cohort.summary
    results["config"] = cfg.to_dict()
    results["command"] = command or f"lasan experiments --out {cfg.out}"
    results["timing"] = {"total_s": round(time.monotonic() - started, 1),
                         "rows_s": {n: i.get("seconds") for n, i in infos.items()},
                         "threads": torch.get_num_threads()}
    results = to_jsonable(results)
    (cfg.out / RESULTS_JSON).write_text(json.dumps(results, indent=2))
    text = render_markdown(results)
    (cfg.out / RESULTS_MD).write_text(text)
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(text)
    return results
