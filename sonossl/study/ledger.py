"""The study ledger (``sonossl study ... --ledger LEDGER``): what a study finished, small enough
for version control, and enough to resume the study or rebuild its report when ``DIR`` is gone.

``DIR`` is scratch (frame stores, checkpoints, backbones, run folders: a cache that may vanish);
``LEDGER`` is the record, as DVC keeps small metafiles in git and the big artefacts in a cache.
Layout::

    LEDGER/study.json                       the study's name, context, and each unit's fingerprints
    LEDGER/<kind>/<...>.json                one record per finished unit, named by its key
                                            (ingest/all.json, pretrain/<name>.json, eval/<dataset>/<init>/...)
    LEDGER/results.csv summary.csv differences.csv report.html   rebuilt from the records alone

A record holds the unit's result row, its ``run.json`` essentials (chosen hyperparameters and the
candidates tried on valid), a pretraining's ``summary.json`` (its ``tune`` and ``health`` blocks
as they are) with its ``stats.jsonl`` per epoch and a thinned loss curve, and the fingerprints of
what produced it (:class:`Fingerprints`): the unit's settings, its data, the sonossl version. It
holds no weights, frames, machine paths (values that are absolute paths are left out) or patient
value beyond the store's pseudonyms. Records are written atomically with sorted keys, and carry a
checksum of their content, so a record edited by hand is told from one sonossl wrote.

Data fingerprints are cheap and do not move with the mount point: each file under a data path by
its path relative to that path, its size and a SHA-256 of its bytes (of its first and last 64 KiB
when larger than :data:`WHOLE_FILE_BYTES`, so an archive of large clips costs two small reads a
file), plus the fingerprint of the pseudonym key an ingestion uses.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from sonossl.errors import SonosslError
from sonossl.outputs import atomic_write_text

LEDGER_FORMAT = 1
WHOLE_FILE_BYTES = 1 << 20  # files up to this size are hashed whole; larger ones by size, first and last 64 KiB
EDGE_BYTES = 64 << 10
CURVE_POINTS = 200  # step lines of stats.jsonl kept for the loss curve (evenly thinned)
CURVE_KEYS = ("kind", "step", "epoch", "loss", "lr")


def sonossl_version() -> str:
    try:
        return metadata.version("sonossl")
    except metadata.PackageNotFoundError:  # a source tree run without installing
        return "unknown"


# ----------------------------------------------------------------------------------- fingerprints
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f"{size}:".encode() + fh.read(EDGE_BYTES))
            fh.seek(size - EDGE_BYTES)
            h.update(fh.read(EDGE_BYTES))
    return h.hexdigest()


def files_fingerprint(path: Path) -> str:
    """16 hex digits naming the files under ``path`` (a file or a folder): relative paths, sizes and
    contents (:data:`WHOLE_FILE_BYTES`), hidden files and folders left out; the same wherever the
    folder sits."""
    path = Path(path)
    if path.is_file():
        entries = [(path.name, path.stat().st_size, _file_digest(path))]
    elif path.is_dir():
        entries = []
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(n for n in files if not n.startswith(".")):
                f = Path(root) / name
                entries.append((f.relative_to(path).as_posix(), f.stat().st_size, _file_digest(f)))
    else:
        raise SonosslError(f"{path}: not found")
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()[:16]


def _is_path(value: Any) -> bool:
    return isinstance(value, Path) or (isinstance(value, str) and len(value) > 1 and os.path.isabs(value))


def portable(value: Any) -> Any:
    """``value`` without what names this machine: dict entries and list items that are absolute
    paths (or Path objects) are left out, recursively."""
    if isinstance(value, dict):
        return {str(k): portable(v) for k, v in value.items() if not _is_path(v)}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value if not _is_path(v)]
    return value


def spec_fingerprint(unit) -> str:
    """16 hex digits of a unit's settings (an evaluation's include its pretraining's), machine paths
    left out (the pseudonym key file is fingerprinted as data instead)."""
    payload = {k: v for k, v in asdict(unit).items() if not (k == "selection" and v == "random")}
    payload = portable(json.loads(json.dumps(payload, default=str)))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Fingerprints:
    """What produced a unit: ``spec`` its settings, ``data`` one fingerprint per data it read
    (``unlabelled``, ``key``, ``labelled:<dataset>``), ``sonossl`` the version."""

    spec: str
    data: dict[str, str | None] = field(default_factory=dict)
    sonossl: str = field(default_factory=sonossl_version)

    def mismatch(self, recorded: dict[str, Any]) -> str | None:
        """Why a record made with ``recorded`` fingerprints is not this unit's; None when it is. A
        part unknown now (``None``: a pseudonym key lost with the study folder) is not held against it."""
        if recorded.get("sonossl") != self.sonossl:
            return f"made by sonossl {recorded.get('sonossl')}, this is {self.sonossl}"
        if recorded.get("spec") != self.spec:
            return "made with other settings (a changed recipe or option)"
        have = recorded.get("data") or {}
        for part in sorted(set(have) | set(self.data)):
            if self.data.get(part) is not None and have.get(part) != self.data.get(part):
                return f"made from other data ({part})"
        return None


# ------------------------------------------------------------------------------------ the records
def checksum(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1, allow_nan=True) + "\n"


def stats_summary(stats: Path) -> dict[str, Any]:
    """A pretraining's ``stats.jsonl`` in brief: every ``epoch`` line, and at most
    :data:`CURVE_POINTS` ``step`` lines (evenly spaced, the last kept) with their loss."""
    epochs, steps = [], []
    if stats.is_file():
        for line in stats.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run
                continue
            if isinstance(rec, dict) and rec.get("kind") == "epoch":
                epochs.append(portable(rec))
            elif isinstance(rec, dict) and rec.get("kind") == "step":
                steps.append({k: rec[k] for k in CURVE_KEYS if k in rec})
    if len(steps) > CURVE_POINTS:
        every = -(-len(steps) // CURVE_POINTS)
        steps = steps[::every] + ([steps[-1]] if (len(steps) - 1) % every else [])
    return {"epochs": epochs, "steps": steps}


class Ledger:
    """``LEDGER``: one record per unit key (:func:`record_path`), and ``study.json``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def record_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def write(self, record: dict[str, Any]) -> Path:
        record = {**record, "ledger_format": LEDGER_FORMAT}
        record["checksum"] = checksum(record)
        path = self.record_path(record["key"])
        text = _dump(record)
        if not path.is_file() or path.read_text() != text:  # unchanged records are not rewritten
            atomic_write_text(path, text)
        return path

    def read(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the record of ``key``, None), (None, why it cannot be used), or (None, None) when absent."""
        path = self.record_path(key)
        if not path.is_file():
            return None, None
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, "not valid JSON"
        if not isinstance(record, dict) or record.get("key") != key:
            return None, f"expected the record of {key}"
        if record.get("checksum") != checksum(record):
            return None, "its content does not match its checksum (edited by hand?)"
        return record, None

    def check(self, key: str, fingerprints: Fingerprints) -> tuple[dict[str, Any] | None, str | None]:
        """The record of ``key`` when it was made by this unit (its fingerprints match), else
        (None, one line naming the file and why it is not used)."""
        record, why = self.read(key)
        if record is not None:
            why = fingerprints.mismatch(record.get("fingerprints") or {})
            if why is None:
                return record, None
        return None, None if why is None else f"{self.record_path(key)}: {why}; not used"

    def write_study(self, description: dict[str, Any]) -> None:
        path = self.root / "study.json"
        text = _dump({**description, "ledger_format": LEDGER_FORMAT})
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)

    def study(self) -> dict[str, Any]:
        path = self.root / "study.json"
        try:
            study = json.loads(path.read_text())
        except FileNotFoundError:
            raise SonosslError(f"{path}: not found; a ledger is written by sonossl study --ledger") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SonosslError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(study, dict) or "ledger_format" not in study:
            raise SonosslError(f"{path}: expected a study ledger's description (written by sonossl study --ledger)")
        return study


def is_ledger(folder: Path) -> bool:
    """Whether ``folder`` is a study ledger (its ``study.json`` says so)."""
    path = Path(folder) / "study.json"
    try:
        return "ledger_format" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


# -------------------------------------------------------------------- a study's units and the ledger
def _path_fields() -> frozenset[str]:
    from sonossl.config import PretrainConfig

    return frozenset(n for n, f in PretrainConfig.model_fields.items() if "Path" in str(f.annotation))


_PATH_FIELDS = _path_fields()  # a pretraining config's paths: frames, out, monitor_labels


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class StudyBook:
    """A study's units held against its ledger: the fingerprints of each unit now, the records that
    count as done, the ledger-only units a unit to run needs again (their artefact is gone from
    ``DIR``), and each finished unit's record. ``store_path(variant)``: where a variant's frame store
    lives in ``DIR``; ``key_file``: the pseudonym key the ingestions use (None: a frame store given)."""

    def __init__(self, ledger: Ledger, plan, out: Path, store_path, key_file: Path | None, log=print):
        self.ledger, self.plan, self.out, self.store_path, self.key_file, self.log = ledger, plan, Path(out), store_path, key_file, log
        self.units = {u.key: u for u in plan.units}
        self._data_cache: dict[str, str] = {}

    # fingerprints
    def _data(self, name: str, path: Path) -> str:
        if name not in self._data_cache:
            self._data_cache[name] = files_fingerprint(path)
        return self._data_cache[name]

    def key_fingerprint(self) -> str | None:
        """The pseudonym key's fingerprint; None while its file does not exist (not made yet, or lost with ``DIR``)."""
        from sonossl.data.ingest import key_fingerprint, load_key

        if self.key_file is None or not self.key_file.is_file():
            return None
        return key_fingerprint(load_key(self.key_file, create=False))

    def fingerprints(self, unit) -> Fingerprints:
        from sonossl.study.grid import EvalUnit, SelectUnit

        spec = self.plan.spec
        data: dict[str, str | None] = {}
        if not isinstance(unit, EvalUnit) or unit.pretrain is not None:
            data["unlabelled"] = self._data("unlabelled", spec.data.unlabelled)
            if self.key_file is not None:
                data["key"] = self.key_fingerprint()
        if isinstance(unit, (EvalUnit, SelectUnit)):
            data[f"labelled:{unit.dataset}"] = self._data(f"labelled:{unit.dataset}", spec.data.labelled[unit.dataset])
        return Fingerprints(spec_fingerprint(unit), data)

    # what is done
    def done(self) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """The keys whose records count as done, and those records; every record that does not
        count is named in one line."""
        keys, records = set(), {}
        for key, unit in self.units.items():
            record, why = self.ledger.check(key, self.fingerprints(unit))
            if record is not None:
                keys.add(key)
                records[key] = record
            elif why:
                self.log(f"[ledger] {why}, {key} runs again")
        return keys, records

    def artefact(self, unit) -> Path | None:
        """What later units read of ``unit`` in ``DIR`` (None: nothing)."""
        from sonossl.study.grid import IngestUnit, PretrainUnit, SelectUnit

        if isinstance(unit, IngestUnit):
            return self.store_path(unit.variant)
        if isinstance(unit, (PretrainUnit, SelectUnit)):
            return self.out / "pretrain" / unit.name / "backbone.pt"
        return None

    def needed_again(self, todo: list[str], from_ledger: set[str]) -> set[str]:
        """The ledger-only units that a unit of ``todo`` needs and whose artefact is gone (a
        pretraining whose evaluations are pending, the ingestion it reads): they run again, with
        the same settings and seed."""
        again, stack = set(), list(todo)
        while stack:
            for dep in self.units[stack.pop()].deps():
                if dep in from_ledger and dep not in again and not self.artefact(self.units[dep]).exists():
                    again.add(dep)
                    stack.append(dep)
        return again

    def check_key(self, to_run: list, records: dict[str, dict[str, Any]]) -> None:
        """Refuse to ingest with a new key what the ledger's records were made with another key of."""
        from sonossl.study.grid import IngestUnit

        ingests = [u.key for u in to_run if isinstance(u, IngestUnit)]
        used = sorted({r["fingerprints"]["data"].get("key") for r in records.values()
                       if (r.get("fingerprints") or {}).get("data", {}).get("key")})
        if ingests and used and self.key_file is not None and not self.key_file.is_file():
            raise SonosslError(f"{self.key_file}: the pseudonym key of the ledger's records (fingerprint {used[0]}) is "
                               f"gone, and {', '.join(ingests)} must run again: a new key would give other clip ids, "
                               "another draw of every pretraining; restore the key file, or start a new ledger")

    # the records
    def record(self, unit, row: dict[str, Any], wall_s: float) -> dict[str, Any]:
        """The ledger record of ``unit``, finished in ``DIR`` with result ``row``."""
        from sonossl.study.grid import EvalUnit, IngestUnit, PretrainUnit, SelectUnit

        rec: dict[str, Any] = {"key": unit.key, "kind": type(unit).__name__, "wall_s": round(float(wall_s), 1),
                               "fingerprints": asdict(self.fingerprints(unit)),
                               "row": portable({k: v for k, v in row.items() if k not in ("run_dir", "unit_hash")})}
        if isinstance(unit, EvalUnit) and row.get("run_dir"):
            run = portable(_json(self.out / row["run_dir"] / "run.json"))
            run.pop("init_source", None)  # the init's folder in DIR (its name is "init")
            rec["run"] = run
            rec["chosen"] = run.get("chosen")
        elif isinstance(unit, PretrainUnit):
            rec.update(self._pretraining(self.out / "pretrain" / unit.name))
        elif isinstance(unit, SelectUnit):
            rec["selection"] = portable(_json(self.out / "pretrain" / unit.name / "selection.json"))
            backbone = self.artefact(unit)
            rec["backbone_sha256"] = _sha256(backbone) if backbone.is_file() else None
        elif isinstance(unit, IngestUnit):
            rec["store"] = self._store(self.store_path(unit.variant))
        return rec

    @staticmethod
    def _pretraining(run: Path) -> dict[str, Any]:
        import yaml

        summary = portable(_json(run / "summary.json"))
        out: dict[str, Any] = {k: summary.pop(k) for k in ("tune", "health") if k in summary}  # opaque, as written
        out["summary"] = summary
        out["stats"] = stats_summary(run / "stats.jsonl")
        try:
            config = yaml.safe_load((run / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            config = None
        if isinstance(config, dict):  # the recipe as resolved, without the folders of DIR (relative ones included)
            config = {k: v for k, v in config.items() if k not in _PATH_FIELDS}
            out["config"] = portable(json.loads(json.dumps(config, default=str)))
        backbone = run / "backbone.pt"
        out["backbone_sha256"] = _sha256(backbone) if backbone.is_file() else None
        return out

    @staticmethod
    def _store(path: Path) -> dict[str, Any]:
        """What an ingestion made, without a frame: counts, and a fingerprint of its clip ids,
        groups, splits and lengths (the same for one archive ingested from anywhere)."""
        from sonossl.data.framestore import FrameStore

        try:
            store = FrameStore(path)
        except SonosslError:
            return {}
        try:
            clips = [(v.video_id, v.group_id, v.split, v.n_frames) for v in store.videos]
            return {"clips": len(clips), "frames": sum(c[3] for c in clips), "groups": len({c[1] for c in clips}),
                    "val_clips": sum(c[2] == "val" for c in clips), "frame_size": store.frame_size,
                    "clips_fingerprint": hashlib.sha256(json.dumps(clips).encode()).hexdigest()[:16]}
        finally:
            store.close()

    def write(self, unit, row: dict[str, Any], wall_s: float) -> None:
        """Record ``unit`` (finished in ``DIR``); say so when a pretraining run again gave other weights
        than the ledger's record of the same settings (its recorded evaluations came from those)."""
        record = self.record(unit, row, wall_s)
        old, _ = self.ledger.read(unit.key)
        if (old is not None and old.get("fingerprints", {}).get("spec") == record["fingerprints"]["spec"]
                and old.get("backbone_sha256") not in (None, record.get("backbone_sha256"))):
            self.log(f"[ledger] {unit.key}: run again, its weights differ from the ledger's earlier record; evaluations "
                     "recorded before came from the earlier weights")
        self.ledger.write(record)

    def describe(self, name: str, context: dict[str, str]) -> None:
        """``LEDGER/study.json``: the study, each unit's fingerprints now, the evaluations in grid order."""
        units = {k: asdict(self.fingerprints(u)) for k, u in self.units.items()}
        self.ledger.write_study({"name": name, "context": context, "units": units,
                                 "evals": [u.key for u in self.plan.evals]})


def pretraining_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A pretraining record's ``summary.json`` as the run wrote it (its ``health`` block put back)."""
    return {**(record.get("summary") or {}), **({"health": record["health"]} if "health" in record else {})}


def curve(record: dict[str, Any]) -> list[dict]:
    """A pretraining record's ``stats.jsonl`` lines as the report's figure reads them."""
    stats = record.get("stats") or {}
    return [*stats.get("epochs", []), *stats.get("steps", [])]


def ledger_results(ledger: Ledger, log=print) -> tuple[list[dict[str, Any]], dict[str, list[dict]], dict[str, dict]]:
    """The evaluation rows of the study ``ledger`` describes, in grid order, its pretrainings'
    curves (name -> stats records) and summaries (name -> summary.json): only records made by the
    study's units (a record whose fingerprints or checksum do not match is named in one line and
    left out)."""
    study = ledger.study()
    units = study.get("units") or {}
    rows, curves, summaries = [], {}, {}
    for key in [*study.get("evals", []), *sorted(k for k in units if k.startswith("pretrain/"))]:
        record, why = ledger.check(key, Fingerprints(**units[key])) if key in units else (None, None)
        if record is None:
            if why:
                log(f"[ledger] {why}, left out of the report")
            continue
        if key.startswith("eval/"):
            rows.append(record["row"])
        else:
            curves[key.split("/", 1)[1]] = curve(record)
            summaries[key.split("/", 1)[1]] = pretraining_summary(record)
    return rows, curves, summaries
