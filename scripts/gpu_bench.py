#!/usr/bin/env python3
"""The prepared GPU run (driver behind scripts/gpu_bench.sh): stages that each fit a time cap, write
their results under $OUT as soon as they finish, and say what they skipped and why.

    scripts/gpu_bench.sh [--dry-run] [--budget SECONDS] [STAGE|PLAN ...]

    stages  setup tests ops e2e counts e2e-fla      (setup always runs first; cached on a warm machine)
    plans   part1 = tests ops     part2 = e2e counts     all = tests ops e2e counts

The budget: 15 minutes of device time per session, machine start and idle time included, and at most
10 minutes per device command. The plan is two commands on one warm machine (the machine stays warm
only ~30 s after a call, so issue the second call at once; a cold second call repeats the setup):

    run(command="scripts/gpu_bench.sh part1", carry=[".whl"], timeout_s=420)   # setup, tests, ops
    run(command="scripts/gpu_bench.sh part2", carry=[".whl"], timeout_s=420)   # e2e, counts

Each command has a budget (default 360 s, `--budget`); each stage has a cap (CAPS below; override with
GPU_BENCH_CAPS="ops=200,e2e=150") and gets min(cap, budget left - RESERVE). A stage that no longer fits
(less than its MIN_SECONDS left) is skipped with that reason. A stage that runs past its time is
interrupted (SIGINT to its process group, so pytest and pytest-benchmark still write their reports;
then SIGTERM / SIGKILL) and what it wrote is kept. Worst case: 2 x 360 s = 12 min of commands plus
the machine's start (1-2 min): within 15 minutes.

Under $OUT (at most 8 files come back from a device command):
    summary.md        stage table (status, seconds, cap, what was skipped and why), versions, result
                      tables so far — rewritten after every stage
    status.json       the same, machine-readable
    benchmarks.json   pytest-benchmark JSON of every bench stage so far (statistics; rounds in the archives)
    <stage>.tar.gz    one per stage, written when the stage ends: its logs, JSON, tables, plot

Wheels (`WHEELS`, default .whl/): every carried wheel's Requires-Dist is checked against the image's
installed packages and the other carried wheels before anything is installed; a wheel whose
requirement conflicts with an installed version that no carried wheel replaces (transformers 5.2.0
needs tokenizers<=0.23.0; the image may have 0.23.2) is skipped with that reason, and the image's
version is used. After installing, an import probe decides: if the carried wheels break an import,
they are dropped and the image's packages are used. fla-core / flash-linear-attention /
causal-conv1d go to a separate folder that only the stages comparing against them see. Source
distributions are never built (causal-conv1d's nvcc build takes longer than a command may run).

--dry-run (GPU_BENCH_DRY_RUN=1): every stage on the CPU at tiny sizes, Triton kernels through the
interpreter (TRITON_INTERPRET=1): the plumbing of the run, tested by tests/test_gpu_bench.py.

Environment: OUT (default .benchmarks/gpu-<stamp>), WHEELS, GPU_BENCH_RUN (work folder, default
/tmp/interns2_gpu_run, kept while the machine is warm), GPU_BENCH_CAPS, GPU_BENCH_QUICK=1 (the quick
case lists), GPU_BENCH_TESTS (test paths, default tests/ops), GPU_BENCH_TEST_WORKERS (pytest-xdist
workers for the tests stage on CUDA, default 4; 0 = no xdist), GPU_BENCH_OPS_PATHS (benchmark files of
the ops stage, default benchmarks/ops), GPU_BENCH_OPS_ARGS / GPU_BENCH_E2E_ARGS (extra pytest
arguments), GPU_BENCH_COUNTS_ARGS.

Only the standard library is imported here (packaging, if importable, for requirement checks):
the driver runs before anything is installed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import email.parser
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

STAGES = ("setup", "tests", "ops", "e2e", "counts", "e2e-fla")
PLANS = {"part1": ("tests", "ops"), "part2": ("e2e", "counts"), "all": ("tests", "ops", "e2e", "counts")}

#: Seconds a stage may run (its own timeout); the budget may cut it shorter.
CAPS = {"setup": 60, "tests": 100, "ops": 160, "e2e": 180, "counts": 90, "e2e-fla": 150}
#: A stage with less than this left is skipped (it could not produce anything useful).
MIN_SECONDS = {"setup": 20, "tests": 30, "ops": 45, "e2e": 60, "counts": 30, "e2e-fla": 60}
#: Default seconds for one command; the run tool's timeout_s should be this + ~60 s, under 8 min.
DEFAULT_BUDGET = 360
#: Seconds kept back at the end of a command: interrupt grace + packing.
RESERVE = 25
#: After SIGINT, seconds a stage gets to write its reports before SIGTERM.
GRACE = 12
#: Files that come back from a device command (summary.md, status.json, benchmarks.json + archives).
MAX_OUT_FILES = 8
#: Largest file that comes back.
MAX_FILE_BYTES = 15 << 20
#: Device-time budget of a session and an estimate of a machine's start, for the plan check.
SESSION_SECONDS = 15 * 60
MACHINE_START_SECONDS = 120

#: Carried packages only the comparison stages see (the public alternatives).
ALTERNATIVES = {"fla-core", "flash-linear-attention", "causal-conv1d"}
#: Packages every stage needs to import; a carried wheel that breaks one of these is dropped.
ESSENTIAL_IMPORTS = ("torch", "transformers", "transformers.modeling_utils")

SKIP_NOTES = {
    "causal-conv1d": ("causal-conv1d skipped: no wheel carried (PyPI has only a source distribution, whose "
                      "build compiles CUDA code with nvcc for longer than one device command may run); carry "
                      "a wheel built beforehand on a machine with the same torch and CUDA to compare against it"),
    "fla-core": ("fla skipped: no fla-core wheel carried (pip download --no-deps fla-core==0.6.0 into .whl/); "
                 "the GDN / gated-norm comparisons against fla are left out"),
}


# --- small helpers ----------------------------------------------------------------------------

def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")


class Log:
    def __init__(self, path: pathlib.Path):
        self.path = path

    def __call__(self, msg: str) -> None:
        line = f"[gpu_bench {now()}] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def run_command(cmd, *, env, cwd, log_path: pathlib.Path, timeout: float) -> tuple[int | None, bool, float]:
    """Run cmd in its own process group, output appended to log_path. Returns (exit code, timed out,
    seconds). On timeout: SIGINT (pytest writes its reports), then SIGTERM, then SIGKILL."""
    t0 = time.monotonic()
    with open(log_path, "ab") as f:
        f.write(f"$ {shlex.join(map(str, cmd))}\n".encode())
        f.flush()
        proc = subprocess.Popen(list(map(str, cmd)), env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            return rc, False, time.monotonic() - t0
        except subprocess.TimeoutExpired:
            pass
        for sig, wait in ((signal.SIGINT, GRACE), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        f.write(f"\n[gpu_bench] interrupted after {timeout:.0f} s (the stage's time)\n".encode())
        return proc.returncode, True, time.monotonic() - t0


# --- wheels: what to install, what to skip and why --------------------------------------------

def _requirement_parser():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - pip vendors it
        try:
            from pip._vendor.packaging.requirements import Requirement  # type: ignore
        except ImportError:
            return None
    return Requirement


@dataclasses.dataclass
class Wheel:
    path: pathlib.Path
    name: str
    version: str
    requires: list[str]
    top_level: list[str]
    install: bool = True
    reason: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def alternative(self) -> bool:
        return self.name in ALTERNATIVES

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


def read_wheel(path: pathlib.Path) -> Wheel:
    """Name, version, Requires-Dist and top-level modules of a wheel file."""
    parts = path.name[:-len(".whl")].split("-")
    if len(parts) < 5:
        raise ValueError(f"{path.name}: not a wheel file name (name-version-python-abi-platform.whl)")
    name, version = canonical(parts[0]), parts[1]
    requires: list[str] = []
    top: list[str] = []
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = next((n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if meta:
            msg = email.parser.Parser().parsestr(z.read(meta).decode("utf-8", "replace"))
            requires = list(msg.get_all("Requires-Dist") or [])
        tl = next((n for n in names if n.count("/") == 1 and n.endswith(".dist-info/top_level.txt")), None)
        if tl:
            top = [t.strip() for t in z.read(tl).decode().splitlines() if t.strip()]
        else:
            for n in names:
                first, sep, _ = n.partition("/")
                if first.endswith((".dist-info", ".data")) or first == "__pycache__":
                    continue
                mod = first if sep else (first[:-3] if first.endswith(".py") else "")
                if mod.isidentifier() and mod not in top:
                    top.append(mod)
    return Wheel(path=path, name=name, version=version, requires=requires, top_level=top)


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def plan_wheels(wheels: list[Wheel], installed=installed_version) -> list[Wheel]:
    """Decide which carried wheels to install (`--no-deps`): a wheel whose requirement conflicts
    with the version that would be importable (a carried wheel's if one is kept, else the image's)
    is skipped with the reason; repeated until nothing changes (skipping one can strand another).
    A requirement that nothing provides is only noted (an extra-like dependency such as a CLI's
    typer-slim does not stop `import`); the import probe after installing decides."""
    Requirement = _requirement_parser()
    by_name: dict[str, list[Wheel]] = {}
    for w in wheels:
        by_name.setdefault(w.name, []).append(w)
    for name, group in by_name.items():  # two versions of one package stop the whole pip install
        if len(group) > 1:
            keep = max(group, key=lambda w: w.path.name)
            for w in group:
                if w is not keep:
                    w.install, w.reason = False, f"another {name} wheel is carried ({keep.path.name}); one version only"
    if Requirement is None:
        for w in wheels:
            w.notes.append("requirements not checked (the packaging module is not importable)")
        return wheels
    changed = True
    while changed:
        changed = False
        kept = {w.name: w.version for w in wheels if w.install}
        for w in wheels:
            if not w.install:
                continue
            notes = []
            for text in w.requires:
                try:
                    req = Requirement(text)
                except Exception:  # noqa: BLE001
                    notes.append(f"unparsed requirement {text!r}")
                    continue
                if req.marker is not None:
                    try:
                        if not req.marker.evaluate({"extra": ""}):
                            continue  # an extra, or not for this Python / platform
                    except Exception:  # noqa: BLE001
                        continue
                dep = canonical(req.name)
                carried = dep in kept
                version = kept[dep] if carried else installed(dep)
                spec = str(req.specifier)
                if version is None:
                    notes.append(f"requires {dep}{spec} (neither installed nor carried; the import probe decides)")
                    continue
                if spec and not req.specifier.contains(version, prereleases=True):
                    where = "the carried wheel is" if carried else "the image has"
                    w.install = False
                    w.reason = (f"{w.label} requires {dep}{spec} but {where} {dep} {version}; skipped "
                                f"(carry a wheel of {dep}{spec} beside it to use it)")
                    changed = True
                    break
            w.notes = notes
    return wheels


def wheel_notes(wheel_dir: pathlib.Path, wheels: list[Wheel]) -> list[str]:
    """One line per thing the run will not have, and why."""
    notes = []
    names = {w.name for w in wheels if w.install}
    for w in wheels:
        if not w.install:
            notes.append(f"wheel {w.path.name} not installed: {w.reason}")
        for n in w.notes:
            notes.append(f"wheel {w.path.name}: {n}")
    if wheel_dir.is_dir():
        for p in sorted(wheel_dir.iterdir()):
            if p.name.endswith((".tar.gz", ".zip", ".tar.bz2")):
                notes.append(f"{p.name} not built: source distributions are never built here (an nvcc build "
                             "does not fit one device command); carry a wheel instead")
    if "causal-conv1d" not in names:
        notes.append(SKIP_NOTES["causal-conv1d"])
    if not names & {"fla-core", "flash-linear-attention"}:
        notes.append(SKIP_NOTES["fla-core"])
    return notes


# --- the run ----------------------------------------------------------------------------------

@dataclasses.dataclass
class StageResult:
    stage: str
    status: str = "not run"          # ok | failed | timed out | skipped | cached | running
    seconds: float = 0.0
    cap: int = 0
    timeout: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)
    summary: str = ""                # one line: what the stage measured / found
    archive: str = ""


class Run:
    def __init__(self, *, out: pathlib.Path, run_dir: pathlib.Path, wheels: pathlib.Path, budget: float,
                 dry_run: bool, caps: dict[str, int], quick: bool):
        self.out, self.dir, self.wheel_dir = out, run_dir, wheels
        self.budget, self.dry_run, self.caps, self.quick = budget, dry_run, caps, quick
        self.t0 = time.monotonic()
        self.py = sys.executable
        self.site = run_dir / "site"        # carried base packages (every stage)
        self.alt = run_dir / "alt"          # carried public alternatives (comparison stages only)
        self.pkg = run_dir / "pkg"          # interns2_fast with its kernels, assembled from the checkout
        self.results: dict[str, StageResult] = {}
        self.env_info: dict = {}
        for d in (out, run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.log = Log(run_dir / "gpu_bench.log")

    # -- time
    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def stage_timeout(self, stage: str) -> tuple[float, str | None]:
        """(seconds the stage gets, reason to skip it or None)."""
        cap = self.caps[stage]
        avail = self.left() - RESERVE
        if avail < MIN_SECONDS[stage]:
            return 0.0, (f"only {max(0, self.left()):.0f} s left of this command's {self.budget:.0f} s budget "
                         f"({RESERVE} s kept for packing); {stage} needs at least {MIN_SECONDS[stage]} s: run it "
                         "in the next command")
        return min(cap, avail), None

    # -- environment of a stage
    def env(self, *, alternatives: bool, interpret: bool, benchmarks_on_path: bool = False) -> dict:
        env = dict(os.environ)
        paths = [str(self.pkg)]
        if alternatives:
            paths.append(str(self.alt))
        paths.append(str(self.site))
        if benchmarks_on_path:
            paths.append(str(ROOT / "benchmarks"))
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONSAFEPATH="1", PYTHONUNBUFFERED="1",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
                   TRITON_CACHE_DIR=str(self.dir / "triton-cache"),
                   INTERNS2_BENCH_DEVICE="cpu" if self.dry_run else "cuda",
                   INTERNS2_BENCH_DTYPE="float32" if self.dry_run else "bfloat16")
        for key in [k for k in env if k.startswith(("PYTEST_", "COV_CORE_"))]:  # an outer pytest's settings
            env.pop(key, None)
        if interpret:
            env["TRITON_INTERPRET"] = "1"
        else:
            env.pop("TRITON_INTERPRET", None)
        if self.quick or self.dry_run:
            env["INTERNS2_BENCH_QUICK"] = "1"
        else:
            env.pop("INTERNS2_BENCH_QUICK", None)
        return env

    # -- bookkeeping, written after every stage
    def write_status(self) -> None:
        status = {"budget_s": self.budget, "elapsed_s": round(time.monotonic() - self.t0, 1), "dry_run": self.dry_run,
                  "env": self.env_info, "stages": {k: dataclasses.asdict(v) for k, v in self.results.items()}}
        text = json.dumps(status, indent=1, default=str)
        (self.dir / "status.json").write_text(text)
        (self.out / "status.json").write_text(text)
        (self.out / "summary.md").write_text(self.summary_markdown())

    def summary_markdown(self) -> str:
        e = self.env_info
        title = "interns2_fast GPU run" + (" — DRY RUN on the CPU (Triton interpreter, tiny sizes)" if self.dry_run else "")
        lines = [f"# {title}", ""]
        if e:
            lines.append(f"{e.get('gpu') or 'no CUDA device'}; torch {e.get('torch')} (CUDA {e.get('cuda')}), "
                         f"transformers {e.get('transformers')}, tokenizers {e.get('tokenizers')}, "
                         f"triton {e.get('triton')}, fla {e.get('fla')}, causal_conv1d {e.get('causal_conv1d')}, "
                         f"python {e.get('python')}")
            lines.append("")
        lines.append(f"Budget of this command: {self.budget:.0f} s; used {time.monotonic() - self.t0:.0f} s.")
        lines.append("")
        lines += ["| stage | status | seconds | cap | result |", "|---|---|---|---|---|"]
        for r in self.results.values():
            lines.append(f"| {r.stage} | {r.status} | {r.seconds:.0f} | {r.cap} | {r.summary} |")
        notes = [(r.stage, n) for r in self.results.values() for n in r.notes]
        if notes:
            lines += ["", "## Notes: what was skipped, and why", ""]
            lines += [f"- **{stage}**: {n}" for stage, n in notes]
        for stage in ("tests", "ops", "e2e", "e2e-fla", "counts"):
            part = self.dir / stage / "results.md"
            if stage in self.results and part.exists():
                lines += ["", f"## {stage}", "", part.read_text().strip()]
        return "\n".join(lines) + "\n"

    def pack(self, stage: str) -> None:
        """$OUT/<stage>.tar.gz (the stage's folder + the driver log) and the merged benchmarks.json."""
        folder = self.dir / stage
        folder.mkdir(exist_ok=True)
        if (self.dir / "gpu_bench.log").exists():
            shutil.copy(self.dir / "gpu_bench.log", folder / "gpu_bench.log")
        name = f"{stage}.tar.gz"
        with tarfile.open(self.out / name, "w:gz") as tar:
            tar.add(folder, arcname=stage)
        if (self.out / name).stat().st_size > MAX_FILE_BYTES:  # would not come back: keep the small files
            self.results[stage].notes.append(f"{name} was over {MAX_FILE_BYTES >> 20} MiB: only its tables, "
                                             "JSON and the driver log are packed")
            with tarfile.open(self.out / name, "w:gz") as tar:
                for f in sorted(folder.iterdir()):
                    if f.suffix in (".md", ".json") or f.name == "gpu_bench.log":
                        tar.add(f, arcname=f"{stage}/{f.name}")
        self.results[stage].archive = name
        jsons = [self.dir / s / "benchmarks.json" for s in self.results if (self.dir / s / "benchmarks.json").is_file()]
        if jsons:
            bench = load_bench_module()
            bench.merge_benchmark_json(jsons, self.out / "benchmarks.json")
        self.write_status()

    # -- stage dispatch
    def run_stage(self, stage: str) -> StageResult:
        r = self.results[stage] = StageResult(stage, cap=self.caps[stage])
        if stage != "setup":  # an earlier command's files on a warm machine must not pass for this one's
            shutil.rmtree(self.dir / stage, ignore_errors=True)
        (self.dir / stage).mkdir(parents=True, exist_ok=True)
        timeout, skip = self.stage_timeout(stage)
        blocked = self.blocked(stage)
        if skip or blocked:
            r.status = "skipped"
            r.notes.append(blocked or skip)
            r.summary = "skipped"
            self.log(f"{stage}: skipped: {blocked or skip}")
            self.pack(stage)
            return r
        r.status, r.timeout = "running", round(timeout)
        self.write_status()  # a command killed from outside still says which stage was running
        self.log(f"{stage}: start (up to {timeout:.0f} s)")
        t0 = time.monotonic()
        try:
            getattr(self, "stage_" + stage.replace("-", "_"))(r, timeout)
        except Exception as exc:  # noqa: BLE001  (a broken stage must not stop the next one)
            r.status = "failed"
            r.notes.append(f"the driver failed in this stage: {type(exc).__name__}: {exc}")
        r.seconds = round(time.monotonic() - t0, 1)
        self.log(f"{stage}: {r.status} in {r.seconds:.0f} s — {r.summary}")
        self.pack(stage)
        return r

    def blocked(self, stage: str) -> str | None:
        if stage == "setup":
            return None
        setup = self.results.get("setup")
        if setup is None or not self.env_info.get("interns2_fast_ok"):
            return "setup did not make interns2_fast importable (see setup's notes and gpu_bench.log)"
        if not self.dry_run and not self.env_info.get("cuda_available"):
            return "no CUDA device (torch.cuda.is_available() is False on this machine)"
        return None

    def finish_subprocess(self, r: StageResult, rc, timed_out: bool, seconds: float, what: str) -> None:
        if timed_out:
            r.status = "timed out"
            r.notes.append(f"{what} interrupted at its time ({r.timeout:.0f} s); what it wrote is kept")
        elif rc == 0:
            r.status = "ok"
        else:
            r.status = "failed"
            r.notes.append(f"{what} exited {rc} (see the stage's log)")

    # -- setup
    def stage_setup(self, r: StageResult, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        d = self.dir / "setup"
        stamp = self.dir / "setup.done.json"
        listing = sorted(p.name for p in self.wheel_dir.iterdir()) if self.wheel_dir.is_dir() else []
        if stamp.exists():
            cached = json.loads(stamp.read_text())
            if cached.get("wheels") == listing and cached.get("root") == str(ROOT) and cached.get("dry_run") == self.dry_run:
                self.env_info = cached["env"]
                r.notes.extend(cached.get("notes", []))
                self.assemble_package()  # the checkout may have changed between commands
                r.status, r.summary = "cached", "done by an earlier command on this machine"
                return
        # the GPU
        smi = shutil.which("nvidia-smi")
        if smi:
            rc, _, _ = run_command([smi], env=os.environ, cwd=ROOT, log_path=d / "nvidia-smi.txt", timeout=20)
            if rc != 0:
                r.notes.append(f"nvidia-smi exited {rc}")
        else:
            r.notes.append("nvidia-smi not found" + (" (dry run on the CPU)" if self.dry_run else ""))
        # carried wheels
        for folder in (self.site, self.alt):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        wheels = []
        if self.wheel_dir.is_dir():
            for p in sorted(self.wheel_dir.glob("*.whl")):
                try:
                    wheels.append(read_wheel(p))
                except Exception as exc:  # noqa: BLE001
                    r.notes.append(f"wheel {p.name} unreadable ({exc}); skipped")
        else:
            r.notes.append(f"no wheel folder {self.wheel_dir}: only the image's packages are used")
        plan_wheels(wheels)
        r.notes.extend(wheel_notes(self.wheel_dir, wheels))
        base = [w for w in wheels if w.install and not w.alternative]
        alt = [w for w in wheels if w.install and w.alternative]
        installed = []
        for group, target in ((base, self.site), (alt, self.alt)):
            if not group:
                continue
            cmd = [self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                   "--disable-pip-version-check", "--upgrade", "--target", target, *[w.path for w in group]]
            rc, to, _ = run_command(cmd, env=os.environ, cwd=ROOT, log_path=d / "pip.log",
                                    timeout=max(5, deadline - time.monotonic() - 20))
            if rc != 0:
                r.notes.append(f"pip install into {target.name} failed (exit {rc}{', timed out' if to else ''}); "
                               f"not installed: {', '.join(w.label for w in group)}")
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
            else:
                installed += group
        self.assemble_package()
        # the import probe: carried base wheels must not break what every stage imports
        carried_base = [w for w in base if w in installed]
        probe_mods = sorted({m for w in carried_base for m in w.top_level} | set(ESSENTIAL_IMPORTS))
        ok, err = (self.probe(probe_mods, alternatives=False, log=d / "probe.log",
                              timeout=max(5, deadline - time.monotonic() - 15)) if carried_base else (True, ""))
        if not ok:
            r.notes.append(f"the carried wheels ({', '.join(w.label for w in base)}) break `import` ({err}); "
                           "dropped: the image's packages are used")
            shutil.rmtree(self.site, ignore_errors=True)
            self.site.mkdir()
            installed = [w for w in installed if w.alternative]
        alt_mods = sorted({m for w in alt if w in installed for m in w.top_level})
        if alt_mods:
            ok_alt, err_alt = self.probe(alt_mods, alternatives=True, log=d / "probe.log",
                                         timeout=max(5, deadline - time.monotonic() - 15))
            if not ok_alt:  # hidden, so that the benchmarks skip them instead of failing on the import
                r.notes.append(f"the carried alternatives ({', '.join(w.label for w in alt)}) do not import "
                               f"({err_alt}); removed: their comparisons skip")
                shutil.rmtree(self.alt, ignore_errors=True)
                self.alt.mkdir()
                installed = [w for w in installed if not w.alternative]
        # versions, CUDA, whether interns2_fast imports with its kernels
        self.env_info = self.describe(d, timeout=max(5, deadline - time.monotonic() - 5))
        self.env_info["wheels_installed"] = [w.label for w in installed]
        r.summary = (f"{self.env_info.get('gpu') or 'no GPU'}; carried: "
                     f"{', '.join(w.label for w in installed) or 'none'}; transformers {self.env_info.get('transformers')}")
        if not self.env_info.get("interns2_fast_ok"):
            r.status = "failed"
            r.notes.append(f"import interns2_fast.kernels failed: {self.env_info.get('interns2_fast')}")
            return
        if not self.dry_run and not self.env_info.get("cuda_available"):
            r.notes.append("torch sees no CUDA device: the GPU stages will skip")
        left = deadline - time.monotonic()
        if left > 8:
            run_command([self.py, "-m", "interns2_fast.cli", "info"], env=self.env(alternatives=True, interpret=False),
                        cwd=ROOT, log_path=d / "info.txt", timeout=left - 3)
        r.status = "ok"
        stamp.write_text(json.dumps({"wheels": listing, "root": str(ROOT), "dry_run": self.dry_run,
                                     "env": self.env_info, "notes": r.notes}))

    def assemble_package(self) -> None:
        """interns2_fast as installed (kernels/ -> interns2_fast/kernels), from the checkout, without
        pip or setuptools; benchmarks/ beside it, where interns2_fast.bench looks for the suites."""
        shutil.rmtree(self.pkg, ignore_errors=True)
        self.pkg.mkdir(parents=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "interns2_fast", self.pkg / "interns2_fast", ignore=ignore)
        shutil.copytree(ROOT / "kernels", self.pkg / "interns2_fast" / "kernels", ignore=ignore)
        (self.pkg / "benchmarks").symlink_to(ROOT / "benchmarks", target_is_directory=True)

    def probe(self, modules, *, alternatives: bool, log: pathlib.Path, timeout: float) -> tuple[bool, str]:
        code = ("import importlib, sys\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n"
                "    except BaseException as e:\n        print(f'import {m}: {type(e).__name__}: {e}'[:400]); "
                "sys.exit(1)\n")
        rc, to, _ = run_command([self.py, "-c", code, *modules], env=self.env(alternatives=alternatives, interpret=False),
                                cwd=ROOT, log_path=log, timeout=timeout)
        if rc == 0:
            return True, ""
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("import ")]
        return False, (lines[-1] if lines else ("timed out" if to else f"exit {rc}"))

    def describe(self, d: pathlib.Path, timeout: float) -> dict:
        code = r"""
import importlib, json, platform, sys
info = {"python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except BaseException as e:
    info.update(torch=f"missing ({type(e).__name__}: {e})"[:200], cuda_available=False)
for mod in ("triton", "transformers", "tokenizers", "fla", "causal_conv1d", "pytest_benchmark", "matplotlib"):
    try:
        m = importlib.import_module(mod)
        info[mod] = getattr(m, "__version__", "present")
        info[mod + "_path"] = getattr(m, "__file__", None)
    except BaseException as e:
        info[mod] = f"missing ({type(e).__name__})"
try:
    import interns2_fast.kernels, interns2_fast
    from interns2_fast import device
    info.update(interns2_fast=interns2_fast.__file__, interns2_fast_ok=True, triton_flavour=device.triton_flavour())
except BaseException as e:
    info.update(interns2_fast=f"{type(e).__name__}: {e}"[:300], interns2_fast_ok=False)
print("ENV-JSON " + json.dumps(info))
"""
        log = d / "env.log"
        run_command([self.py, "-c", code], env=self.env(alternatives=True, interpret=self.dry_run), cwd=ROOT,
                    log_path=log, timeout=timeout)
        for line in reversed(log.read_text().splitlines()):
            if line.startswith("ENV-JSON "):
                info = json.loads(line[len("ENV-JSON "):])
                (d / "env.json").write_text(json.dumps(info, indent=1))
                return info
        return {"interns2_fast_ok": False, "interns2_fast": "the environment probe printed nothing (see env.log)"}

    # -- tests on CUDA
    def stage_tests(self, r: StageResult, timeout: float) -> None:
        d = self.dir / "tests"
        default = "tests/ops/test_norm_gated.py" if self.dry_run else "tests/ops"
        paths = shlex.split(os.environ.get("GPU_BENCH_TESTS", default))
        cmd = [self.py, "-m", "pytest", *paths, "-v", "-rfEs", "-o", "addopts=", "--import-mode=importlib",
               "-p", "no:cacheprovider", f"--junitxml={d / 'junit.xml'}"]
        workers = int(os.environ.get("GPU_BENCH_TEST_WORKERS", "0" if self.dry_run else "4"))
        if workers > 0 and importlib.util.find_spec("xdist") is not None:
            cmd += ["-n", str(workers)]
        else:
            cmd += ["-p", "no:xdist"]
            if workers > 0:
                r.notes.append("pytest-xdist not installed: tests run in one process")
        if importlib.util.find_spec("pytest_timeout") is not None:
            cmd += ["--timeout", "60"]  # one hung kernel must not eat the stage
        if self.dry_run:
            cmd += ["-k", os.environ.get("GPU_BENCH_TESTS_K", "not slow")]
            r.notes.append("dry run: tests on the CPU through the Triton interpreter (not compiled kernels)")
        else:
            cmd += ["-p", "cuda_default_device"]
        env = self.env(alternatives=True, interpret=self.dry_run, benchmarks_on_path=True)
        if not self.dry_run:
            env["TRITON_INTERPRET"] = "0"
        log = d / "pytest.log"
        rc, to, secs = run_command(cmd, env=env, cwd=ROOT, log_path=log, timeout=timeout)
        counts, failed = pytest_outcomes(log.read_text(errors="replace"))
        r.summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no test outcome recorded"
        lines = [f"Tests ({'CPU, interpreter' if self.dry_run else 'CUDA, compiled Triton'}): {r.summary}"
                 + (" — interrupted at the stage's time" if to else "")]
        if failed:
            lines += ["", "Failed:", ""] + [f"- `{t}`" for t in failed[:40]]
        (d / "results.md").write_text("\n".join(lines) + "\n")
        self.finish_subprocess(r, rc, to, secs, "pytest")
        if rc == 1 and not to:
            r.status = "failed"
            r.notes.append(f"{len(failed)} test(s) failed on {'the CPU' if self.dry_run else 'CUDA'} (listed in summary.md)")

    # -- benchmark suites
    def run_bench(self, r: StageResult, timeout: float, *, folder: str, suite_paths, alternatives: bool,
                  extra_env: dict, extra_args) -> None:
        bench = load_bench_module()
        d = self.dir / folder
        json_path, partial = d / "benchmarks.json", d / "benchmarks-partial.json"
        cmd = bench.pytest_command(suite_paths, json_path, quick=self.quick or self.dry_run, extra_args=extra_args)
        cmd[0] = self.py
        cmd += ["-p", "partial_json"]  # benchmarks/partial_json.py: the JSON after every finished case
        env = self.env(alternatives=alternatives, interpret=False, benchmarks_on_path=True)
        env.update(extra_env, INTERNS2_BENCH_PARTIAL_JSON=str(partial))
        rc, to, secs = run_command(cmd, env=env, cwd=ROOT, log_path=d / "pytest.log", timeout=timeout)
        text = (d / "pytest.log").read_text(errors="replace")
        for reason in skip_reasons(text):
            r.notes.append(f"benchmark cases skipped: {reason}")
        if not json_path.is_file() and partial.is_file():
            shutil.copy(partial, json_path)
            r.notes.append("pytest-benchmark wrote no final JSON (interrupted): the cases finished before the "
                           "interruption are reported (benchmarks/partial_json.py)")
        partial.unlink(missing_ok=True)
        if json_path.is_file():  # per-round timings of µs-scale GPU cases can reach tens of MB: statistics only
            bench.merge_benchmark_json([json_path], json_path)
        rows = bench.make_rows(bench.load_benchmarks([json_path])) if json_path.is_file() else []
        parts = []
        if rows:
            parts.append(bench.markdown_table(rows))
            bench.plot_speedup(rows, d / "speedup.png", title=f"interns2_fast {folder} — {self.env_info.get('gpu') or 'CPU'}")
        elif to:
            r.notes.append("no benchmark finished before the stage's time ran out")
        (d / "results.md").write_text("\n\n".join(parts) + "\n" if parts else "no benchmark measured\n")
        r.summary = f"{len(rows)} benchmark row(s)"
        self.finish_subprocess(r, 0 if rc == 5 else rc, to, secs, "pytest-benchmark")

    def stage_ops(self, r: StageResult, timeout: float) -> None:
        extra = shlex.split(os.environ.get("GPU_BENCH_OPS_ARGS", ""))
        if self.dry_run:
            extra = extra or ["-k", "B32-T1"]
            paths = ["benchmarks/ops/bench_norm_gated.py"]
        else:
            paths = ["benchmarks/ops"]
            extra = ["--benchmark-max-time=0.25", "--benchmark-min-rounds=5", "--benchmark-warmup=on",
                     "--benchmark-warmup-iterations=2"] + extra
        paths = [ROOT / p for p in shlex.split(os.environ.get("GPU_BENCH_OPS_PATHS", "")) or paths]
        self.run_bench(r, timeout, folder="ops", suite_paths=paths, alternatives=True, extra_env={}, extra_args=extra)

    def _e2e_env(self) -> dict:
        if self.dry_run:
            return dict(INTERNS2_BENCH_E2E_MODEL="default", INTERNS2_BENCH_LAYERS="4", INTERNS2_BENCH_PREFILL_T="8",
                        INTERNS2_BENCH_DECODE_B="1", INTERNS2_BENCH_DECODE_STEPS="1")
        if self.quick:
            return dict(INTERNS2_BENCH_ROUNDS="3")
        return dict(INTERNS2_BENCH_PREFILL_T="512,2048,8192", INTERNS2_BENCH_DECODE_B="1,8",
                    INTERNS2_BENCH_DECODE_STEPS="16", INTERNS2_BENCH_ROUNDS="5")

    def stage_e2e(self, r: StageResult, timeout: float) -> None:
        # reference = the pure transformers fallback: fla / causal-conv1d NOT importable
        r.notes.append("reference is transformers' PyTorch fallback (fla / causal-conv1d hidden); "
                       "stage e2e-fla measures against transformers' fla fast path")
        self.run_bench(r, timeout, folder="e2e", suite_paths=[ROOT / "benchmarks/e2e"], alternatives=False,
                       extra_env=self._e2e_env(), extra_args=shlex.split(os.environ.get("GPU_BENCH_E2E_ARGS", "")))

    def stage_e2e_fla(self, r: StageResult, timeout: float) -> None:
        if not (self.alt / "fla").is_dir() and not self.dry_run:
            r.status, r.summary = "skipped", "skipped"
            r.notes.append("no fla-core wheel installed: transformers' fast path is the fallback here, as in e2e")
            return
        self.run_bench(r, timeout, folder="e2e-fla", suite_paths=[ROOT / "benchmarks/e2e"], alternatives=True,
                       extra_env=self._e2e_env(), extra_args=shlex.split(os.environ.get("GPU_BENCH_E2E_ARGS", "")))

    def stage_counts(self, r: StageResult, timeout: float) -> None:
        d = self.dir / "counts"
        if self.dry_run:
            args = ["--model", "default", "--dtype", "float32", "--device", "cpu", "--variants", "reference",
                    "patched-triton", "--steps", "1", "--prompt-len", "4"]
        else:
            args = ["--model", "full", "--dtype", "bfloat16", "--device", "cuda"]
        args += shlex.split(os.environ.get("GPU_BENCH_COUNTS_ARGS", ""))
        cmd = [self.py, ROOT / "benchmarks/counts.py", "--json", d / "counts.json", "--md", d / "results.md", *args]
        rc, to, secs = run_command(cmd, env=self.env(alternatives=False, interpret=False), cwd=ROOT,
                                   log_path=d / "counts.log", timeout=timeout)
        r.summary = "counts table written" if (d / "results.md").exists() else "no counts written"
        self.finish_subprocess(r, rc, to, secs, "counts.py")


def load_bench_module():
    """interns2_fast/bench.py from the checkout, without importing the package (its __init__ imports
    torch and transformers); the helpers used here import nothing at module level."""
    name = "_interns2_bench_for_gpu_run"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "interns2_fast" / "bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_OUTCOME = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def pytest_outcomes(text: str) -> tuple[dict[str, int], list[str]]:
    """Outcome counts and failed test ids from `pytest -v` output (also when it was interrupted:
    the progress lines are read, not the final summary)."""
    counts: dict[str, int] = {}
    failed: list[str] = []
    for line in text.splitlines():
        if "::" not in line or line.startswith(("FAILED ", "ERROR ", "SKIPPED ")):
            continue
        m = _OUTCOME.search(line)
        if not m:
            continue
        kind = m.group(1).lower()
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("failed", "error"):
            test = next((tok for tok in line.split() if "::" in tok), line.strip())
            failed.append(test)
    return counts, failed


_SKIP = re.compile(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$")


def skip_reasons(text: str) -> list[str]:
    """'N case(s): reason' for every `-rs` skip line of a pytest log."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = _SKIP.match(line.strip())
        if m:
            out[m.group(2)] = out.get(m.group(2), 0) + int(m.group(1))
    return [f"{n} case(s): {reason}" for reason, n in out.items()]


def parse_caps(text: str | None) -> dict[str, int]:
    caps = dict(CAPS)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in CAPS or not value.strip().isdigit():
            raise SystemExit(f"gpu_bench: GPU_BENCH_CAPS expects STAGE=SECONDS pairs with STAGE in {', '.join(CAPS)}; "
                             f"got {part!r}")
        caps[key] = int(value)
    return caps


def expand(names) -> list[str]:
    stages = ["setup"]
    for n in names or ["all"]:
        for s in PLANS.get(n, (n,)):
            if s not in STAGES:
                raise SystemExit(f"gpu_bench: unknown stage {n!r}; stages: {', '.join(STAGES)}; plans: {', '.join(PLANS)}")
            if s not in stages:
                stages.append(s)
    if len(stages) + 3 > MAX_OUT_FILES:
        raise SystemExit(f"gpu_bench: {len(stages)} stages write {len(stages) + 3} files, more than the {MAX_OUT_FILES} "
                         "a device command brings back; split them over two commands (part1, part2)")
    return stages


def plan_seconds(stages, caps=CAPS) -> int:
    """Worst-case seconds of one command running `stages`."""
    return sum(caps[s] for s in stages) + RESERVE


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_bench.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("stages", nargs="*", help=f"stages ({', '.join(STAGES)}) or plans ({', '.join(PLANS)}); default all")
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_BENCH_DRY_RUN") == "1",
                   help="every stage on the CPU at tiny sizes through the Triton interpreter")
    p.add_argument("--budget", type=float, default=float(os.environ.get("GPU_BENCH_BUDGET", DEFAULT_BUDGET)),
                   help=f"seconds this command may take (default {DEFAULT_BUDGET})")
    args = p.parse_args(argv)
    stages = expand(args.stages)
    caps = parse_caps(os.environ.get("GPU_BENCH_CAPS"))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = pathlib.Path(os.environ.get("OUT") or ROOT / ".benchmarks" / f"gpu-{stamp}")
    run_dir = pathlib.Path(os.environ.get("GPU_BENCH_RUN", "/tmp/interns2_gpu_run"))
    wheels = pathlib.Path(os.environ.get("WHEELS", ROOT / ".whl"))
    if not wheels.is_absolute():
        wheels = ROOT / wheels
    run = Run(out=out, run_dir=run_dir, wheels=wheels, budget=args.budget, dry_run=args.dry_run, caps=caps,
              quick=os.environ.get("GPU_BENCH_QUICK") == "1")
    run.log(f"stages {' '.join(stages)}; budget {args.budget:.0f} s (worst case of the caps: "
            f"{plan_seconds(stages, caps)} s); out {out}; dry run {args.dry_run}")
    for s in stages:
        run.run_stage(s)
    run.write_status()
    bad = [r.stage for r in run.results.values() if r.status in ("failed", "timed out")]
    run.log(f"done in {time.monotonic() - run.t0:.0f} s; {'problems in: ' + ', '.join(bad) if bad else 'no stage failed'}; "
            f"files in {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
