"""The ``lasan`` command: one entry point, subcommands like git.

Each subcommand lives in the ``cli.py`` of the package that owns the work
(``lasan/formats/cli.py`` is ``lasan inspect``, ``integration/cli.py`` is ``lasan listen``, ...)
and exposes two functions, ``configure(parser)`` and ``run(args) -> int``. Only the chosen
subcommand's module is imported, so ``lasan inspect`` starts without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import LasanError

__all__ = ["main", "COMMANDS"]

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("lasan.formats.cli", "read ECG files (DICOM, HL7, WFDB, ECG-system exports, FHIR) and report leads, rate, quality"),
    "synth": ("lasan.train.synth_cli", "write a synthetic ARVC / LQTS / control cohort with a manifest"),
    "train": ("lasan.train.cli", "train a LASAN or hybrid model from a YAML config"),
    "evaluate": ("lasan.train.evaluate_cli", "evaluate a checkpoint: AUROC with CIs, lead masking, baselines"),
    "targets": ("lasan.train.targets", "measure the trustworthiness targets (importance, calibration, operating points) on a running Triton: MET / MISSED"),
    "experiments": ("lasan.train.experiments", "run the paper's experiment grid; one table with the paper's numbers"),
    "build": ("lasan.build.cli", "export a checkpoint to a Triton model repository"),
    "serve": ("lasan.build.serve", "start the embedded Triton server on a model repository"),
    "score": ("lasan.client.cli", "score ECG files through Triton"),
    "listen": ("lasan.integration.cli", "run the HL7 MLLP listener / DICOM receiver / watch folder"),
    "queue": ("lasan.integration.queue_cli", "list, show, re-queue and purge the listener's queued items"),
    "bench": ("lasan.benchmarks.cli", "run the benchmarks and print the results table"),
    "demo": ("lasan.demo", "the end-to-end demo: synthesise, train, build, serve, score"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: lasan COMMAND [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'lasan COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"lasan {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lasan: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"lasan {name}", description=help_)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    module.configure(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(module.run(args) or 0)
    except LasanError as exc:
        print(f"lasan {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lasan {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
