"""``sonossl study``: run a :class:`~sonossl.study.grid.Plan`, resumably, locally or on SLURM.

Units run in dependency order (ingestions, then the pretrainings that read them, then the
evaluations of each init as soon as its pretraining is done). A unit is complete only once its
result file exists (``DIR/records/done/``, written atomically by the job that ran it,
:class:`~sonossl.study.store.UnitRecords`); the launcher alone folds those files into
``DIR/study.db`` (:class:`~sonossl.study.store.ResultsStore`), as outcomes arrive and on every
start, so no job opens the database (safe on a cluster's network file system). Completed units
are skipped on ``--resume``, and a unit that was interrupted resumes from its own checkpoint
(pretraining) or restarts (an evaluation run, minutes at most). A unit that runs out of disk
space stops the study: the runs in flight finish, nothing new starts, and the error is one line
(exit status 2); ``--resume`` continues once space is freed.

Layout of ``DIR``::

    study.yaml  study.json           the resolved study and its description (for the report)
    records/done/<key>.json          one result file per completed unit (records/failed/: failed attempts)
    study.db                         the launcher's index of those files (SQLite, rollback journal)
    (LEDGER/, with --ledger)         one small record per finished unit, kept apart from DIR, for version
                                     control: --resume takes its units as done when DIR is gone (ledger.py)
    data/<variant>.h5                frame stores, one per pretraining-data variant
    pretrain/<method>-<pairs>-<variant>/   pretraining runs (stats.jsonl, backbone.pt, ...)
    pretrain/<...>-best/             keep: best: the chosen draw's backbone.pt, config.yaml, summary.json
                                     (hard links) and selection.json (every draw's validation score)
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

from sonossl.config import DEFAULT_BACKBONE
from sonossl.data.framestore import is_store_path
from sonossl.downstream.protocol import RESULT_COLUMNS
from sonossl.diskspace import DiskFullError, full_errno, full_message
from sonossl.errors import SonosslError
from sonossl.launch import Requeueable, check_launcher
from sonossl.outlock import releasing
from sonossl.outputs import atomic_write_csv, atomic_write_text, claim_output_dir
from sonossl.study.grid import SELECT_SEEDS, EvalUnit, IngestUnit, Plan, PretrainUnit, SelectUnit
from sonossl.study.ledger import Ledger, StudyBook, curve, ledger_results, pretraining_summary, spec_fingerprint
from sonossl.study.store import ResultsStore, UnitRecords

_AT = RESULT_COLUMNS.index("accuracy") + 1  # evaluate's columns, with the study's keys after the scores
STUDY_COLUMNS = [*RESULT_COLUMNS[:_AT], "dataset", "pretrain", "method", "pairs", "data_variant", *RESULT_COLUMNS[_AT:]]
RUNS_COLUMNS = ["init", "protocol", "fraction", "seed", "dataset", "run_dir", "selection"]


@dataclass
class Context:
    """What a unit needs besides itself; plain data, so it crosses process and job boundaries."""

    out: str
    unlabelled: str | None
    store_given: bool
    labelled: dict[str, str]
    monitor_dataset: str | None
    imagenet_weights: str | None = None
    save_models: bool | str = False  # True: every evaluation run keeps model.pt; a protocol name: that protocol's runs
    ingest_shards: int = 1  # > 1: each variant is ingested in parts (a job array on a cluster) into data/<variant>/


@dataclass
class Outcome:
    key: str
    ok: bool
    wall_s: float
    message: str = ""
    skipped: bool = False
    disk_full: bool = False  # the unit ran out of space: the study stops starting new units


@dataclass
class StudySummary:
    total: int
    already_done: int
    from_ledger: int = 0  # of already_done: units whose only record is the ledger's
    ran: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    disk_full: str = ""  # the first out-of-space message, if any
    results: Path | None = None
    report: Path | None = None
    ledger_report: Path | None = None


def unit_hash(unit) -> str:
    """The settings a completed unit was run with; a resumed study must not silently change them.
    Machine paths are left out (:func:`~sonossl.study.ledger.spec_fingerprint`), so a study whose
    data (and pseudonym key file) sit at another mount point resumes as it is."""
    return spec_fingerprint(unit)


def _path_keyed_hash(unit) -> str:
    """:func:`unit_hash` as an older sonossl wrote it, absolute paths (the key file's) included."""
    payload = {k: v for k, v in asdict(unit).items() if not (k == "selection" and v == "random")}  # as before the axis
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------- the payloads
def _store_path(ctx: Context, variant: str) -> Path:
    if ctx.store_given:
        return Path(ctx.unlabelled)
    data = Path(ctx.out) / "data"
    return data / variant if ctx.ingest_shards > 1 else data / f"{variant}.h5"


def _run_ingest(unit: IngestUnit, ctx: Context, shard: int | None = None) -> dict[str, Any]:
    """Ingest the variant's sources into its store; sharded (``ctx.ingest_shards > 1``): part
    ``shard`` alone (a job of the array), or with ``shard`` None every part in turn, the parts
    already written only checked (how the launcher completes the unit after the array)."""
    from sonossl.config import IngestConfig, build_config
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
    n = ctx.ingest_shards
    parts = [None] if n == 1 else [(shard, n)] if shard is not None else [(i, n) for i in range(n)]
    settings = {k: v for k, v in o.items() if k != "clips"}  # the ingest block and the variant's curation
    settings["salt_file"] = o.get("salt_file") or Path(ctx.out) / "data" / "sonossl.key"  # one key for all variants
    cfgs = [build_config(IngestConfig, {**settings, "sources": sources, "out": out,
                                        "shard": f"{part[0]}/{part[1]}" if part else None},
                         source=f"ingest {unit.variant}") for part in parts]
    done = [ingest(cfg, resume=True, progress=False) for cfg in cfgs]
    return {"clips": sum(s.ok + s.skipped for s in done), "errors": sum(s.error for s in done),
            "frames": sum(s.frames_kept for s in done)}


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

SELECTED_FILES = ("backbone.pt", "config.yaml", "summary.json")  # what an evaluation reads of a pretraining


def _run_select(unit: SelectUnit, ctx: Context) -> dict[str, Any]:
    """Probe each draw's features on the valid split, then make ``pretrain/<name>/`` the winner's:
    its files linked (copied where links are not possible) beside ``selection.json``, built in a
    temporary folder and renamed into place, so the folder is whole or absent."""
    import shutil

    from sonossl.config import EvaluateConfig, build_config
    from sonossl.downstream.evaluate import valid_score

    root = Path(ctx.out) / "pretrain"
    scores = {}
    for draw in unit.draws:
        cfg = build_config(EvaluateConfig, unit.config, {
            "labels": ctx.labelled[unit.dataset], "init": str(root / draw.name), "protocol": ["linear"],
            "fractions": [100.0], "seeds": list(SELECT_SEEDS), "imagenet_weights": ctx.imagenet_weights},
            source=f"select {unit.name}")
        scores[draw.name] = valid_score(cfg, cache=_EVAL_CACHE)
    chosen = max(scores, key=lambda name: scores[name]["valid_balanced_accuracy"])  # the first of equals
    record = {"chosen": chosen, "criterion": "linear probe on every train label, validation balanced accuracy, "
              f"mean over probe seeds {list(SELECT_SEEDS)}; the test split is not read", "dataset": unit.dataset,
              "draws": scores}
    final, tmp = root / unit.name, root / f".{unit.name}.tmp"
    for stale in (tmp, final):  # an attempt killed before it was recorded: this unit's own folders
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in SELECTED_FILES:
        try:
            os.link(root / chosen / name, tmp / name)
        except OSError:
            shutil.copy2(root / chosen / name, tmp / name)
    atomic_write_text(tmp / "selection.json", json.dumps(record, indent=1))
    os.replace(tmp, final)
    return {"chosen": chosen, **{f"valid_{name}": s["valid_balanced_accuracy"] for name, s in scores.items()}}


def _run_eval(unit: EvalUnit, ctx: Context) -> dict[str, Any]:
    from sonossl.config import EvaluateConfig, build_config
    from sonossl.downstream.evaluate import evaluate

    out = Path(ctx.out) / unit.folder
    pre = unit.pretrain
    init = unit.init if pre is None else str(Path(ctx.out) / "pretrain" / pre.name)
    cfg = build_config(EvaluateConfig, unit.config, {
        "labels": ctx.labelled[unit.dataset], "init": init, "protocol": [unit.protocol], "fractions": [unit.fraction],
        "seeds": [unit.seed], "out": out, "imagenet_weights": ctx.imagenet_weights}, source=f"evaluate {unit.key}")
    [row] = evaluate(cfg, resume=True, progress=None, save_models=ctx.save_models in (True, unit.protocol),
                     cache=_EVAL_CACHE)
    [run_dir] = [p for p in out.iterdir() if p.is_dir()]
    return {**row, "init": unit.init, "dataset": unit.dataset, "pretrain": pre.name if pre else "",
            "method": pre.method if pre else "", "pairs": pre.pairs if pre else "", "data_variant": pre.variant if pre else "",
            "run_dir": str(run_dir.relative_to(ctx.out))}


def run_unit(unit, ctx: Context) -> Outcome:
    """Run one unit and write its result file (never the database); never raises (failures are
    recorded as files too, except a full disk, which is reported in the outcome only)."""
    records = UnitRecords(Path(ctx.out))
    if records.is_done(unit.key):
        return Outcome(unit.key, True, 0.0, skipped=True)
    t0 = time.time()
    try:
        fn = {IngestUnit: _run_ingest, PretrainUnit: _run_pretrain, SelectUnit: _run_select, EvalUnit: _run_eval}[type(unit)]
        with releasing():  # the unit's output locks end with the unit, not with the study
            row = fn(unit, ctx)
        wall = time.time() - t0
        records.write_done(unit.key, type(unit).__name__, {**row, "unit_hash": unit_hash(unit)}, wall)
        return Outcome(unit.key, True, wall)
    except DiskFullError as exc:  # no failure file: there is no room for one, and the unit is not at fault
        return Outcome(unit.key, False, time.time() - t0, str(exc), disk_full=True)
    except SonosslError as exc:
        msg = str(exc)
    except Exception as exc:  # a bug or a crash in one run must not stop the study
        code = full_errno(exc)
        if code is not None:  # a write that no guard caught: still a full disk, named by the study folder
            return Outcome(unit.key, False, time.time() - t0, full_message(Path(ctx.out), code, None, None), disk_full=True)
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        (Path(ctx.out) / "logs").mkdir(exist_ok=True)
        (Path(ctx.out) / "logs" / (unit.key.replace("/", "__") + ".traceback.txt")).write_text(traceback.format_exc())
    try:
        records.write_failed(unit.key, msg)
    except DiskFullError as exc:
        return Outcome(unit.key, False, time.time() - t0, str(exc), disk_full=True)
    return Outcome(unit.key, False, time.time() - t0, msg)


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


def prepare(plan: Plan, out: Path, *, resume: bool, overwrite: bool, command: str = "study") -> Path:
    """Check everything, then claim ``out``: bad input leaves nothing behind. ``command``: whose
    output ``out`` is (``demo``: the demo's study, whose data the demo wrote inside ``out``)."""
    missing = plan.missing_paths()
    if missing:
        raise SonosslError(missing[0])
    records = UnitRecords(Path(out))
    if resume and ((Path(out) / "study.db").is_file() or records.root.is_dir()):
        store = ResultsStore(Path(out) / "study.db")
        try:
            store.fold(records)  # units a killed launcher had not folded yet are complete too
            rows = store.rows()
        finally:
            store.close()
        for unit in plan.units:
            r = rows.get(unit.key)
            if r is not None and r.get("unit_hash") not in (unit_hash(unit), _path_keyed_hash(unit)):
                raise SonosslError(f"{out}/study.yaml: the settings of completed run {unit.key} changed; "
                                   "use a new --out, or --overwrite to start again")
    data = plan.spec.data
    inputs = [] if command == "demo" else [("data.unlabelled", data.unlabelled),
                                           *((f"data.labelled.{k}", v) for k, v in data.labelled.items())]
    out = claim_output_dir(out, command=command, inputs=inputs, resume=resume, overwrite=overwrite)
    atomic_write_text(out / "study.yaml", yaml.safe_dump(json.loads(plan.spec.model_dump_json()), sort_keys=False))
    atomic_write_text(out / "study.json", json.dumps({"name": plan.spec.name, "context": _context(plan),
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
              overwrite: bool = False, imagenet_weights: Path | None = None, save_models: bool | str = False,
              slurm: dict[str, Any] | None = None, ingest_shards: int = 1, ledger: Path | None = None,
              log: Callable[[str], None] = print, command: str = "study") -> StudySummary:
    """Run every unit of ``plan`` not yet complete in ``out`` (nor, with ``ledger``, recorded there
    by the same unit: :mod:`sonossl.study.ledger`); then write results and the report (and the
    ledger's). ``command``: whose output ``out`` is (see :func:`prepare`)."""
    check_launcher(launcher)
    if workers < 1:
        raise SonosslError(f"--workers: {workers}; expected >= 1")
    if ingest_shards < 1:
        raise SonosslError(f"--ingest-shards: {ingest_shards}; expected >= 1")
    if ledger is not None:
        _check_ledger(Path(ledger), Path(out), plan)
    out = prepare(plan, out, resume=resume, overwrite=overwrite, command=command)
    ctx = Context(out=str(out), unlabelled=str(plan.spec.data.unlabelled) if plan.spec.data.unlabelled else None,
                  store_given=is_store_path(plan.spec.data.unlabelled),
                  labelled={k: str(v) for k, v in plan.spec.data.labelled.items()},
                  monitor_dataset=plan.datasets[0] if plan.datasets else None,
                  imagenet_weights=str(imagenet_weights) if imagenet_weights else None, save_models=save_models,
                  ingest_shards=ingest_shards)
    if any(u.init == "imagenet" for u in plan.evals):
        from sonossl.downstream.evaluate import resolve_init

        backbone = plan.evals[0].config.get("backbone") or DEFAULT_BACKBONE
        resolve_init("imagenet", backbone, imagenet_weights)  # no weights: say so now, not after hours

    store, records = ResultsStore(out / "study.db"), UnitRecords(out)
    store.fold(records)
    done = store.completed() & {u.key for u in plan.units}
    book, from_ledger = None, {}
    if ledger is not None:
        book, from_ledger = _ledger_done(plan, out, ctx, Path(ledger), done, resume, log)
    summary = StudySummary(total=len(plan.units), already_done=len(done) + len(from_ledger), from_ledger=len(from_ledger))
    todo = [u for u in plan.units if u.key not in done and u.key not in from_ledger]
    tally = _Tally(todo, done | set(from_ledger), _Progress(plan, store, workers, log), summary, records, book)
    log(f"[study] {plan.spec.name}: {len(plan.units)} units, {summary.already_done} already complete"
        + (f" ({len(from_ledger)} recorded in the ledger only)" if from_ledger else "") + f", {len(todo)} to run "
        f"({launcher}, {workers} worker{'s' * (workers > 1)})")
    try:
        if launcher == "local":
            _run_local(todo, ctx, workers, tally)
        else:
            _run_submitit(todo, ctx, workers, tally, launcher=launcher, slurm=slurm or {})
    finally:
        try:
            store.fold(records)  # whatever finished while the last outcomes were settled
            if book is not None:
                _sync_ledger(book, plan, store)
            summary.results = export_results(plan, out, store, {k: r["row"] for k, r in from_ledger.items()})
        finally:
            store.close()
    if summary.disk_full:  # the runs that finished are recorded; the rest wait for --resume
        raise DiskFullError(summary.disk_full)
    if summary.results is not None:
        from sonossl.study.report import load_pretrain_curves, load_pretrain_summaries, write_report

        ledgered = {k.split("/", 1)[1]: r for k, r in from_ledger.items() if k.startswith("pretrain/")}
        summary.report = write_report(
            out, curves={**{n: curve(r) for n, r in ledgered.items()}, **load_pretrain_curves(out)},
            summaries={**{n: pretraining_summary(r) for n, r in ledgered.items()}, **load_pretrain_summaries(out)})["report"]
        if book is not None:
            summary.ledger_report = report_ledger(book.ledger.root, log=log).get("report")
    return summary


def _key_file(plan: Plan, out: Path, store_given: bool) -> Path | None:
    """The pseudonym key the study's ingestions use (as :func:`_run_ingest` picks it); None for a store given."""
    if store_given:
        return None
    return Path(plan.spec.ingest.salt_file) if plan.spec.ingest.salt_file else out / "data" / "sonossl.key"


def _check_ledger(ledger: Path, out: Path, plan: Plan) -> None:
    """The ledger must outlive ``DIR`` and be apart from the data; one study writes it at a time."""
    from sonossl.outlock import check_apart, lock_output

    if ledger.resolve().is_relative_to(out.resolve()):
        raise SonosslError(f"--ledger {ledger}: inside the study folder {out}, which it is meant to outlive; "
                           "give a folder outside it (e.g. in your project's git repository)")
    data = plan.spec.data
    check_apart(ledger, [("data.unlabelled", data.unlabelled), *((f"data.labelled.{k}", v) for k, v in data.labelled.items())])
    if ledger.exists() and any(ledger.iterdir()) and not (ledger / "study.json").is_file():
        raise SonosslError(f"--ledger {ledger}: a folder that is not a study ledger (no study.json); give an empty "
                           "or new folder, or the ledger of this study")
    lock_output(ledger, "study")


def _ledger_done(plan: Plan, out: Path, ctx: Context, ledger: Path, done: set[str], resume: bool,
                 log: Callable[[str], None]) -> tuple[StudyBook, dict[str, dict[str, Any]]]:
    """The ledger's records that count as done (with ``resume``; a fresh study only writes the
    ledger), less those a unit to run needs again because their artefact is gone from ``DIR``."""
    book = StudyBook(Ledger(ledger), plan, out, lambda variant: _store_path(ctx, variant),
                     _key_file(plan, out, ctx.store_given), log)
    valid, records = book.done() if resume else (set(), {})
    from_ledger = valid - done
    todo = [u.key for u in plan.units if u.key not in done and u.key not in from_ledger]
    again = book.needed_again(todo, from_ledger)
    for key in sorted(again):
        log(f"[ledger] {key}: recorded, but {book.artefact(book.units[key])} is gone and a unit to run needs it: it runs "
            "again (the same settings and seed)")
    from_ledger -= again
    book.check_key([u for u in plan.units if u.key not in done and u.key not in from_ledger],
                   {k: records[k] for k in from_ledger})
    book.describe(plan.spec.name, _context(plan))
    return book, {k: records[k] for k in from_ledger}


def _sync_ledger(book: StudyBook, plan: Plan, store: ResultsStore) -> None:
    """Record every unit complete in ``DIR`` in the ledger (unchanged records are not rewritten)."""
    rows, walls = store.rows(), store.walls()
    for unit in plan.units:
        if unit.key in rows:
            book.write(unit, rows[unit.key], walls.get(unit.key, 0.0))
    book.describe(plan.spec.name, _context(plan))


def report_ledger(folder: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """``results.csv``, ``summary.csv``, ``differences.csv`` and ``report.html`` in the ledger
    ``folder``, from its records alone (``DIR`` is not read)."""
    from sonossl.study.report import write_report

    folder = Path(folder)
    rows, curves, summaries = ledger_results(Ledger(folder), log=log)
    if not rows:
        raise SonosslError(f"{folder}: the ledger holds no finished evaluation of its study")
    atomic_write_csv(folder / "results.csv", rows, STUDY_COLUMNS)
    return {"results": folder / "results.csv", **write_report(folder, curves=curves, summaries=summaries)}


class _Tally:
    """Done, failed and blocked units as outcomes arrive, with a progress line per outcome."""

    def __init__(self, todo: list, done: set[str], progress: _Progress, summary: StudySummary, records: UnitRecords,
                 book: StudyBook | None = None):
        self.todo, self.done, self.progress, self.summary, self.records = todo, done, progress, summary, records
        self.failed: set[str] = set()
        self.book = book  # the ledger: each unit's record as it finishes
        self.units = {u.key: u for u in todo}

    @property
    def stopped(self) -> bool:
        """True once a unit ran out of disk space: start nothing more."""
        return bool(self.summary.disk_full)

    def settle(self, outcome: Outcome) -> None:
        try:
            self.progress.store.fold(self.records)  # the launcher alone writes the database
        except DiskFullError as exc:
            self.summary.disk_full = self.summary.disk_full or str(exc)
        if outcome.disk_full:
            self.summary.disk_full = self.summary.disk_full or outcome.message
            return
        if not outcome.ok and self.records.is_done(outcome.key):  # its job died after recording it: complete
            outcome = Outcome(outcome.key, True, outcome.wall_s)
        if outcome.ok:
            self.done.add(outcome.key)
            self.summary.ran += 0 if outcome.skipped else 1
            self._record(outcome.key)
        else:
            self.failed.add(outcome.key)
            self.summary.failed[outcome.key] = outcome.message
        settled = self.done | self.failed | set(self.summary.blocked)
        self.progress.report(self.done, [u.key for u in self.todo if u.key not in settled], outcome)

    def _record(self, key: str) -> None:
        row = self.progress.store.row(key) if self.book is not None else None
        if row is not None:
            try:
                self.book.write(self.units[key], *row)
            except DiskFullError as exc:
                self.summary.disk_full = self.summary.disk_full or str(exc)

    def blocked(self, unit) -> bool:
        """A unit that needs a failed (or itself blocked) unit: recorded as blocked."""
        if any(d in self.failed or d in self.summary.blocked for d in unit.deps()):
            self.summary.blocked.append(unit.key)
            return True
        return False

    def ready(self, unit) -> bool:
        return all(d in self.done for d in unit.deps())


def _longest_first(unit) -> int:
    """Workers take the ready units in this order, each kind in plan order: what others wait for
    (ingestion, pretraining), then the long ones (fine-tuning), then the rest, so the short runs
    fill the gaps at the end instead of a long one running alone."""
    if isinstance(unit, (IngestUnit, PretrainUnit, SelectUnit)):
        return 0
    return 1 if isinstance(unit, EvalUnit) and unit.protocol == "finetune" else 2


def _run_local(todo: list, ctx: Context, workers: int, tally: _Tally) -> None:
    if workers == 1:
        for unit in todo:
            if tally.stopped:
                break
            if not tally.blocked(unit):
                tally.settle(run_unit(unit, ctx))
        return

    threads = max(1, (os.cpu_count() or 1) // workers)
    pending = sorted(todo, key=_longest_first)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,)) as pool:
        running: dict = {}
        while pending or running:
            if tally.stopped:
                pending.clear()  # out of space: let the runs in flight finish, start nothing new
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
                    tally.summary.blocked += [u.key for u in pending]
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                unit = running.pop(fut)
                try:
                    tally.settle(fut.result())
                except Exception as exc:  # the worker process itself died (e.g. out of memory)
                    tally.settle(Outcome(unit.key, False, 0.0, f"worker died: {type(exc).__name__}: {exc}"))


def _job(unit, ctx: Context, shard: int | None = None):
    """A job's payload (:class:`~sonossl.launch.Requeueable`): one unit, or one part (``shard``)
    of an ingestion unit; a requeued unit resumes from its own checkpoint (a part from its partial
    store)."""
    if shard is not None:
        return _run_ingest(unit, ctx, shard=shard)
    return run_unit(unit, ctx)


def study_job_shape(slurm: dict[str, Any], workers: int):
    """One unit per job (``gpus`` GPUs, ``cpus``, ``mem``), ``workers`` jobs of an array at once."""
    from sonossl.launch import JobShape

    return JobShape(timeout_min=int(slurm.get("timeout_min", 24 * 60)), gpus_per_node=int(slurm.get("gpus", 1)),
                    cpus_per_task=int(slurm.get("cpus", 8)), mem=slurm.get("mem", "64G"),
                    partition=slurm.get("partition"), array_parallelism=workers, name="sonossl-study")


def _job_failed(job, key: str, exc: Exception) -> Outcome:
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return Outcome(key, False, 0.0, f"job {job.job_id} failed: {last}")


def _ingest_shards(units: list, ctx: Context, executor, tally: _Tally) -> None:
    """Each ingestion's parts as one job array; a unit whose parts all succeeded is then completed
    here (every part already written, so only checked) and recorded."""
    with executor.batch():
        jobs = [(u, executor.submit(Requeueable(_job, u, ctx, i))) for u in units for i in range(ctx.ingest_shards)]
    failed: dict[str, Outcome] = {}
    for u, job in jobs:
        try:
            job.result()
        except Exception as exc:  # the part's job failed (a bad archive, killed, out of memory, ...)
            failed.setdefault(u.key, _job_failed(job, u.key, exc))
    for u in units:
        tally.settle(failed.get(u.key) or run_unit(u, ctx))


def _run_submitit(todo: list, ctx: Context, workers: int, tally: _Tally, *, launcher: str, slurm: dict[str, Any]) -> None:
    """Waves in dependency order (ingest, pretrain, select, evaluate), each a job array."""
    from sonossl.launch import executor as make_executor

    executor = make_executor(Path(ctx.out) / "submitit", launcher, study_job_shape(slurm, workers))
    cluster = launcher == "slurm"
    for kind in (IngestUnit, PretrainUnit, SelectUnit, EvalUnit):
        runnable = [u for u in todo if isinstance(u, kind) and not tally.blocked(u)]
        if kind is IngestUnit and ctx.ingest_shards > 1 and runnable and not tally.stopped:
            _ingest_shards(runnable, ctx, executor, tally)
            continue
        # The local executor starts every job of an array at once: keep it to `workers` at a time.
        chunk = len(runnable) if cluster else workers
        for i in range(0, len(runnable), max(1, chunk)):
            if tally.stopped:
                return
            jobs = []
            with executor.batch():
                for u in runnable[i:i + chunk]:
                    jobs.append((u, executor.submit(Requeueable(_job, u, ctx))))
            for u, job in jobs:
                try:
                    outcome = job.result()
                except Exception as exc:  # the job itself failed (killed, out of memory, ...)
                    outcome = _job_failed(job, u.key, exc)
                tally.settle(outcome)


def export_results(plan: Plan, out: Path, store: ResultsStore, ledger_rows: dict[str, dict] | None = None) -> Path | None:
    """``results.csv`` and ``runs.csv`` from the store (and the rows of evaluations only the ledger
    records), in grid order (so two runs of the same study write identical files however their
    units were scheduled); ``runs.csv`` lists the run folders there are."""
    rows = {**(ledger_rows or {}), **store.rows("EvalUnit")}
    ordered = [rows[u.key] for u in plan.evals if u.key in rows]
    if not ordered:
        return None
    atomic_write_csv(out / "results.csv", ordered, STUDY_COLUMNS)
    atomic_write_csv(out / "runs.csv", [r for r in ordered if r.get("run_dir")], RUNS_COLUMNS)
    return out / "results.csv"
