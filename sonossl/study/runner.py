"""``sonossl study``: run a :class:`~sonossl.study.grid.Plan`, resumably, locally or on SLURM.

Units run in dependency order (ingestions, then the pretrainings that read them, then the
evaluations of each init as soon as its pretraining is done). A unit is complete only once its
row is committed to ``DIR/study.db`` (:class:`~sonossl.study.store.ResultsStore`); completed
units are skipped on ``--resume``, and a unit that was interrupted resumes from its own
checkpoint (pretraining) or restarts (an evaluation run, minutes at most).

Layout of ``DIR``::

    study.yaml  study.json           the resolved study and its description (for the report)
    study.db                         the results store (SQLite, WAL)
    data/<variant>.h5                frame stores, one per pretraining-data variant
    pretrain/<method>-<pairs>-<variant>/   pretraining runs (stats.jsonl, backbone.pt, ...)
    evals/<dataset>/<init>/<protocol>-<fraction>-s<seed>/   one downstream training each
    results.csv  runs.csv            every evaluation, in grid order (rewritten as runs finish)
    summary.csv  differences.csv  report.html   from ``sonossl report``, run at the end

Launchers: ``local`` runs ``--workers`` units at once in worker processes, each with
``cores / workers`` torch threads; ``slurm`` submits job arrays through submitit (one GPU per
job, requeued on preemption or time-out, the payload resuming from its checkpoint);
``submitit-local`` runs the same payloads through submitit's local executor, which is how the
SLURM path is tested without a cluster.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import signal
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import yaml

from sonossl.errors import SonosslError
from sonossl.outputs import claim_output_dir
from sonossl.study.grid import BASELINE_INITS, EvalUnit, IngestUnit, Plan, PretrainUnit
from sonossl.study.store import ResultsStore

STUDY_COLUMNS = ["init", "protocol", "fraction", "seed", "n_train", "macro_f1", "balanced_accuracy", "accuracy",
                 "dataset", "pretrain", "method", "pairs", "data_variant", "selection", "classes_missed"]
RUNS_COLUMNS = ["init", "protocol", "fraction", "seed", "dataset", "run_dir", "selection"]
LAUNCHERS = ("local", "slurm", "submitit-local")


@dataclass
class Context:
    """What a unit needs besides itself; plain data, so it crosses process and job boundaries."""

    out: str
    unlabelled: str | None
    store_given: bool
    labelled: dict[str, str]
    monitor_dataset: str | None
    imagenet_weights: str | None = None
    save_models: bool = False


@dataclass
class Outcome:
    key: str
    ok: bool
    wall_s: float
    message: str = ""
    skipped: bool = False


@dataclass
class StudySummary:
    total: int
    already_done: int
    ran: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    results: Path | None = None
    report: Path | None = None


def unit_hash(unit) -> str:
    """The settings a completed unit was run with; a resumed study must not silently change them."""
    payload = {k: v for k, v in asdict(unit).items() if not (k == "selection" and v == "random")}  # as before the axis
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------- the payloads
def _store_path(ctx: Context, variant: str) -> Path:
    return Path(ctx.unlabelled) if ctx.store_given else Path(ctx.out) / "data" / f"{variant}.h5"


def _run_ingest(unit: IngestUnit, ctx: Context) -> dict[str, Any]:
    from sonossl.data.ingest import ingest
    from sonossl.data.readers import find_sources

    o = unit.options
    sources = [Path(ctx.unlabelled)]
    if o.get("clips"):
        found = find_sources(sources, image_folders=True)
        if o["clips"] > len(found):
            raise SonosslError(f"variants.{unit.variant}.clips: {o['clips']} asked for, {len(found)} sources found")
        sources = sorted(random.Random(0).sample(found, o["clips"]))  # a seeded draw, the same on every rerun
    out = _store_path(ctx, unit.variant)
    out.parent.mkdir(parents=True, exist_ok=True)
    s = ingest(sources, out, frame_skip=o["frame_skip"], size=o["size"], crop=o["crop"], val_fraction=o["val_fraction"],
               salt=o["salt"], max_frames_per_video=o.get("max_frames_per_video"), dedup=o.get("dedup"),
               resume=True, progress=False)
    return {"clips": s.ok, "errors": s.error, "frames": s.frames_kept}


def _run_pretrain(unit: PretrainUnit, ctx: Context) -> dict[str, Any]:
    from sonossl.config import PretrainConfig, build_config
    from sonossl.methods.train import run_pretrain

    run = Path(ctx.out) / "pretrain" / unit.name
    extra = {"frames": _store_path(ctx, unit.variant), "out": run}
    if ctx.monitor_dataset and "monitor_labels" not in unit.config:
        extra["monitor_labels"] = ctx.labelled[ctx.monitor_dataset]
    cfg = build_config(PretrainConfig, unit.config, extra, source=f"pretrain {unit.name}")
    run_pretrain(cfg, resume=True, progress=False)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}


_EVAL_CACHE: dict = {}  # per worker process: the labelled set and frozen features, reused across runs


def _run_eval(unit: EvalUnit, ctx: Context) -> dict[str, Any]:
    from sonossl.config import EvaluateConfig, build_config
    from sonossl.downstream.evaluate import evaluate, read_results

    out = Path(ctx.out) / unit.folder
    init = unit.init if unit.init in BASELINE_INITS else str(Path(ctx.out) / "pretrain" / unit.init)
    cfg = build_config(EvaluateConfig, unit.config, {
        "labels": ctx.labelled[unit.dataset], "init": init, "protocol": [unit.protocol], "fractions": [unit.fraction],
        "seeds": [unit.seed], "out": out, "imagenet_weights": ctx.imagenet_weights}, source=f"evaluate {unit.key}")
    [row] = read_results(evaluate(cfg, resume=True, progress=None, save_models=ctx.save_models, cache=_EVAL_CACHE))
    [run_dir] = [p for p in out.iterdir() if p.is_dir()]
    method, pairs, variant = (unit.init.split("-", 2) if unit.init not in BASELINE_INITS else ("", "", ""))
    return {**row, "init": unit.init, "dataset": unit.dataset, "pretrain": "" if unit.init in BASELINE_INITS else unit.init,
            "method": method, "pairs": pairs, "data_variant": variant,
            "run_dir": str(run_dir.relative_to(ctx.out))}


def run_unit(unit, ctx: Context) -> Outcome:
    """Run one unit and record it in the store; never raises (failures are recorded)."""
    store = ResultsStore(Path(ctx.out) / "study.db")
    try:
        if unit.key in store.completed():
            return Outcome(unit.key, True, 0.0, skipped=True)
        t0 = time.time()
        try:
            fn = {IngestUnit: _run_ingest, PretrainUnit: _run_pretrain, EvalUnit: _run_eval}[type(unit)]
            row = fn(unit, ctx)
        except SonosslError as exc:
            store.fail(unit.key, str(exc))
            return Outcome(unit.key, False, time.time() - t0, str(exc))
        except Exception as exc:  # a bug or a crash in one run must not stop the study
            msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            (Path(ctx.out) / "logs").mkdir(exist_ok=True)
            (Path(ctx.out) / "logs" / (unit.key.replace("/", "__") + ".traceback.txt")).write_text(traceback.format_exc())
            store.fail(unit.key, msg)
            return Outcome(unit.key, False, time.time() - t0, msg)
        wall = time.time() - t0
        store.record(unit.key, type(unit).__name__, {**row, "unit_hash": unit_hash(unit)}, wall)
        return Outcome(unit.key, True, wall)
    finally:
        store.close()


def _init_worker(threads: int) -> None:
    """A local worker: its share of the cores, and death with its parent (kill -9 of the runner
    must not leave orphans writing into the study)."""
    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


# ----------------------------------------------------------------------------------- the runner
class _Progress:
    def __init__(self, plan: Plan, store: ResultsStore, workers: int, log: Callable[[str], None]):
        self.total = len(plan.units)
        # runs alike in cost: ingestions, pretrainings, and evaluations per protocol (a fine-tuning
        # run costs many linear probes)
        self.kind_of = {u.key: type(u).__name__ + (f"/{u.protocol}" if isinstance(u, EvalUnit) else "") for u in plan.units}
        self.store, self.workers, self.log = store, workers, log

    def report(self, done: set[str], remaining: list[str], last: Outcome | None = None) -> None:
        durations: dict[str, list[float]] = {}
        for key, wall in self.store.walls().items():
            if key in self.kind_of:
                durations.setdefault(self.kind_of[key], []).append(wall)
        eta, unknown = 0.0, False
        for key in remaining:
            d = durations.get(self.kind_of[key])
            if d:
                eta += sum(d) / len(d)
            else:
                unknown = True  # no run of this kind has finished yet
        eta_text = "ETA unknown until one run of each kind has finished" if unknown else f"ETA {_fmt(eta / max(1, self.workers))}"
        what = ""
        if last is not None:
            what = f"{last.key} {'ok' if last.ok else 'FAILED'} in {last.wall_s:.0f}s; "
        self.log(f"[study {time.strftime('%H:%M:%S')}] {what}{len(done)}/{self.total} done, {len(remaining)} remaining, "
                 f"{eta_text}")


def _fmt(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def prepare(plan: Plan, out: Path, *, resume: bool, overwrite: bool) -> Path:
    """Check everything, then claim ``out``: bad input leaves nothing behind."""
    missing = plan.missing_paths()
    if missing:
        raise SonosslError(missing[0])
    existing = Path(out) / "study.db"
    if resume and existing.is_file():
        store = ResultsStore(existing)
        try:
            rows = store.rows()
        finally:
            store.close()
        for unit in plan.units:
            r = rows.get(unit.key)
            if r is not None and r.get("unit_hash") != unit_hash(unit):
                raise SonosslError(f"{out}/study.yaml: the settings of completed run {unit.key} changed; "
                                   "use a new --out, or --overwrite to start again")
    out = claim_output_dir(out, resume=resume, overwrite=overwrite)
    (out / "study.yaml").write_text(yaml.safe_dump(json.loads(plan.spec.model_dump_json()), sort_keys=False))
    (out / "study.json").write_text(json.dumps({"name": plan.spec.name, "context": _context(plan),
                                                "units": len(plan.units), "evaluations": len(plan.evals)}, indent=1))
    return out


def _context(plan: Plan) -> dict[str, str]:
    spec, ev = plan.spec, plan.spec.evaluate
    ctx = {"data": f"unlabelled: {spec.data.unlabelled.name if spec.data.unlabelled else 'none'}; labelled: "
                   + ", ".join(spec.data.labelled)}
    if spec.pretrain is not None:
        pg = spec.pretrain
        ctx["pretraining"] = (f"{', '.join(pg.methods)}; pairs {', '.join(pg.pairs)}; data variants "
                              + ", ".join(f"{v} ({_variant_text(spec.variants[v])})" for v in pg.variants)
                              + f"; preset {pg.preset}" + (f", {pg.options}" if pg.options else ""))
    ctx["evaluation"] = (f"{', '.join(ev.protocols)}; fractions {', '.join(f'{f:g}' for f in ev.fractions)} %; "
                         f"seeds {', '.join(map(str, ev.seeds))}; {len(plan.evals)} downstream trainings")
    return {**ctx, **spec.context}


def _variant_text(v) -> str:
    parts = [f"frame skip {v.frame_skip}"]
    if v.clips:
        parts.append(f"{v.clips} clips")
    if v.max_frames_per_video:
        parts.append(f"<= {v.max_frames_per_video} frames/clip")
    if v.dedup:
        parts.append(f"dedup {v.dedup:g}")
    return ", ".join(parts)


def run_study(plan: Plan, out: Path, *, workers: int = 1, launcher: str = "local", resume: bool = False,
              overwrite: bool = False, imagenet_weights: Path | None = None, save_models: bool = False,
              slurm: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> StudySummary:
    """Run every unit of ``plan`` not yet complete in ``out``; then write results and the report."""
    if launcher not in LAUNCHERS:
        raise SonosslError(f"--launcher: {launcher!r}; expected one of: {', '.join(LAUNCHERS)}")
    if workers < 1:
        raise SonosslError(f"--workers: {workers}; expected >= 1")
    if launcher == "slurm":
        import shutil

        if shutil.which("sbatch") is None:
            raise SonosslError("--launcher slurm: sbatch not found on this machine (use --launcher local)")
    out = prepare(plan, out, resume=resume, overwrite=overwrite)
    ctx = Context(out=str(out), unlabelled=str(plan.spec.data.unlabelled) if plan.spec.data.unlabelled else None,
                  store_given=bool(plan.spec.data.unlabelled and plan.spec.data.unlabelled.suffix in (".h5", ".hdf5")),
                  labelled={k: str(v) for k, v in plan.spec.data.labelled.items()},
                  monitor_dataset=plan.datasets[0] if plan.datasets else None,
                  imagenet_weights=str(imagenet_weights) if imagenet_weights else None, save_models=save_models)
    if any(u.init == "imagenet" for u in plan.evals):
        from sonossl.downstream.evaluate import resolve_init

        backbone = plan.evals[0].config.get("backbone") or "resnet18"
        resolve_init("imagenet", backbone, imagenet_weights)  # no weights: say so now, not after hours

    store = ResultsStore(out / "study.db")
    done = store.completed() & {u.key for u in plan.units}
    summary = StudySummary(total=len(plan.units), already_done=len(done))
    progress = _Progress(plan, store, workers, log)
    todo = [u for u in plan.units if u.key not in done]
    log(f"[study] {plan.spec.name}: {len(plan.units)} units, {len(done)} already complete, {len(todo)} to run "
        f"({launcher}, {workers} worker{'s' * (workers > 1)})")
    try:
        if launcher == "local":
            _run_local(todo, ctx, workers, done, progress, summary)
        else:
            _run_submitit(todo, ctx, workers, done, progress, summary, cluster="slurm" if launcher == "slurm" else "local",
                          slurm=slurm or {})
    finally:
        summary.results = export_results(plan, out, store)
        store.close()
    if summary.results is not None:
        from sonossl.study.report import write_report

        summary.report = write_report(out)["report"]
    return summary


class _Tally:
    """Done, failed and blocked units as outcomes arrive, with a progress line per outcome."""

    def __init__(self, todo: list, done: set[str], progress: _Progress, summary: StudySummary):
        self.todo, self.done, self.progress, self.summary = todo, done, progress, summary
        self.failed: set[str] = set()

    def settle(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.done.add(outcome.key)
            self.summary.ran += 0 if outcome.skipped else 1
        else:
            self.failed.add(outcome.key)
            self.summary.failed[outcome.key] = outcome.message
        settled = self.done | self.failed | set(self.summary.blocked)
        self.progress.report(self.done, [u.key for u in self.todo if u.key not in settled], outcome)

    def blocked(self, unit) -> bool:
        """A unit that needs a failed (or itself blocked) unit: recorded as blocked."""
        if any(d in self.failed or d in self.summary.blocked for d in unit.deps()):
            self.summary.blocked.append(unit.key)
            return True
        return False

    def ready(self, unit) -> bool:
        return all(d in self.done for d in unit.deps())


def _run_local(todo: list, ctx: Context, workers: int, done: set[str], progress: _Progress, summary: StudySummary) -> None:
    tally = _Tally(todo, done, progress, summary)
    if workers == 1:
        for unit in todo:
            if not tally.blocked(unit):
                tally.settle(run_unit(unit, ctx))
        return

    threads = max(1, (os.cpu_count() or 1) // workers)
    pending = list(todo)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,)) as pool:
        running: dict = {}
        while pending or running:
            for unit in list(pending):
                if len(running) >= workers:
                    break
                if tally.blocked(unit):
                    pending.remove(unit)
                elif tally.ready(unit):
                    pending.remove(unit)
                    running[pool.submit(run_unit, unit, ctx)] = unit
            if not running:
                if pending:  # dependencies neither done nor failed: cannot happen in a valid plan
                    summary.blocked += [u.key for u in pending]
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                unit = running.pop(fut)
                try:
                    tally.settle(fut.result())
                except Exception as exc:  # the worker process itself died (e.g. out of memory)
                    tally.settle(Outcome(unit.key, False, 0.0, f"worker died: {type(exc).__name__}: {exc}"))


class _Job:
    """A submitit payload: one unit. Requeued by submitit on preemption or time-out, and the
    unit resumes from its own checkpoint, so requeueing loses at most the last few minutes."""

    def __init__(self, unit, ctx: Context):
        self.unit, self.ctx = unit, ctx

    def __call__(self) -> Outcome:
        return run_unit(self.unit, self.ctx)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(_Job(self.unit, self.ctx))


def _run_submitit(todo: list, ctx: Context, workers: int, done: set[str], progress: _Progress, summary: StudySummary,
                  *, cluster: str, slurm: dict[str, Any]) -> None:
    """Waves in dependency order (ingest, pretrain, evaluate), each a job array."""
    import submitit

    folder = Path(ctx.out) / "submitit"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"timeout_min": int(slurm.get("timeout_min", 24 * 60)), "slurm_array_parallelism": workers}
    if cluster == "slurm":
        params.update(gpus_per_node=int(slurm.get("gpus", 1)), cpus_per_task=int(slurm.get("cpus", 8)),
                      slurm_mem=slurm.get("mem", "64G"))
        if slurm.get("partition"):
            params["slurm_partition"] = slurm["partition"]
    executor.update_parameters(**params)
    tally = _Tally(todo, done, progress, summary)
    for kind in (IngestUnit, PretrainUnit, EvalUnit):
        runnable = [u for u in todo if isinstance(u, kind) and not tally.blocked(u)]
        # The local executor starts every job of an array at once: keep it to `workers` at a time.
        chunk = len(runnable) if cluster == "slurm" else workers
        for i in range(0, len(runnable), max(1, chunk)):
            jobs = []
            with executor.batch():
                for u in runnable[i:i + chunk]:
                    jobs.append((u, executor.submit(_Job(u, ctx))))
            for u, job in jobs:
                try:
                    outcome = job.result()
                except Exception as exc:  # the job itself failed (killed, out of memory, ...)
                    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                    outcome = Outcome(u.key, False, 0.0, f"job {job.job_id} failed: {last}")
                tally.settle(outcome)


def export_results(plan: Plan, out: Path, store: ResultsStore) -> Path | None:
    """``results.csv`` and ``runs.csv`` from the store, in grid order (so two runs of the same
    study write identical files however their units were scheduled)."""
    from sonossl.downstream.evaluate import write_csv_atomic

    rows = store.rows("EvalUnit")
    ordered = [rows[u.key] for u in plan.evals if u.key in rows]
    if not ordered:
        return None
    write_csv_atomic(out / "results.csv", ordered, STUDY_COLUMNS)
    write_csv_atomic(out / "runs.csv", ordered, RUNS_COLUMNS)
    return out / "results.csv"
