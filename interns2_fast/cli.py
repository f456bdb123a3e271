"""The `interns2-fast` command: info | lower | bench | demo | check | generate."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import device, ops, pto

    info = device.describe()
    info["pto"] = pto.state()  # the csrc/ PTO kernels: built or not, CPU simulator / NPU (unverified)
    if args.json:
        info["ops"] = {name: list(op.registered()) for name, op in ops.OPS.items()}
        print(json.dumps(info, indent=2))
        return 0
    console = Console()
    table = Table(title="interns2_fast environment")
    table.add_column("key")
    table.add_column("value")
    for key, value in info.items():
        table.add_row(key, ("; ".join(value) or "none") if key == "problems" else str(value))
    console.print(table)
    ops_table = Table(title="ops and their registered backends (auto on CPU: torch, else reference)")
    ops_table.add_column("op")
    ops_table.add_column("backends")
    for name, op in ops.OPS.items():
        ops_table.add_row(name, ", ".join(op.registered()))
    console.print(ops_table)
    return 0


def _cmd_lower(args, configs=None) -> int:
    from . import lowering

    configs = lowering.collect(args.module) if configs is None else configs
    if args.only:
        configs = [c for c in configs if any(part in c.name for part in args.only)]
    if not args.json:
        print(f"lowering {len(configs)} configuration(s) for {args.target}", file=sys.stderr)

    def progress(r):
        if not args.json:
            ub = f" (UB {r.ub_required_bits} / {r.ub_available_bits} bits)" if r.ub_required_bits else ""
            detail = f": {r.error}" if r.error else ""
            print(f"{r.status:8s} {r.name} [{r.seconds:.1f}s]{ub}{detail}")

    results = lowering.lower_all(configs, args.target, progress=progress)
    failed = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps({"target": args.target, "results": [r.__dict__ for r in results],
                          "failed": len(failed)}, indent=2))
    else:
        print(f"{len(results) - len(failed)} lowered, {len(failed)} failed")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interns2-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="devices, Triton flavour, versions and the registered backends")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("lower", help="lower every kernel's production configuration for an Ascend chip")
    from .lowering import CI_TARGETS, DEFAULT_TARGET

    p.add_argument("--target", default=DEFAULT_TARGET,
                   help=f"the chip, as bishengir-compile names it (default {DEFAULT_TARGET}; CI checks "
                        f"{' and '.join(CI_TARGETS)})")
    p.add_argument("--json", action="store_true", help="print one JSON report")
    p.add_argument("--only", nargs="*", help="only configurations whose name contains one of these")
    p.add_argument("--module", action="append", help="collect LOWERING_CONFIGS from this module (repeatable; "
                   "default: every interns2_fast.kernels module)")

    p = sub.add_parser("bench", help="run the benchmark suites: Markdown table, pytest-benchmark JSON, speedup plot")
    from .bench import add_arguments as _bench_arguments

    _bench_arguments(p)
    from .usercmds import add_user_commands

    add_user_commands(sub)  # demo, check, generate
    return parser


def _environment_problems() -> list[str]:
    """Broken-install states every command reports instead of a traceback (see device.environment_problems)."""
    from . import device

    return device.environment_problems()


def main(argv=None, *, configs=None) -> int:
    args = build_parser().parse_args(argv)
    problems = _environment_problems()
    if args.command == "info":
        status = _cmd_info(args)
        for problem in problems:
            print(f"interns2-fast info: {problem}", file=sys.stderr)
        return 2 if problems else status
    if problems:  # a half-installed torch_npu, a mixed triton or a kernels transformers cannot import: one sentence each, exit 2
        for problem in problems:
            print(f"interns2-fast {args.command}: {problem}", file=sys.stderr)
        return 2
    if args.command == "lower":
        return _cmd_lower(args, configs)
    if args.command == "bench":
        from .bench import main as _bench_main

        return _bench_main(args)
    if args.command in ("demo", "check", "generate"):
        from .usercmds import run_user_command

        return run_user_command(args)
    raise SystemExit(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
