"""``study.yaml``: the whole study as one file, validated at the edge, expanded into runs.

A study declares where the data is, which pretrainings to run (method x pairs mode x
pretraining-data variant) and which evaluations (labelled datasets x initialisations x
protocols x label fractions x seeds)::

    name: planes-study
    data:
      unlabelled: scans/               # clips (ingested once per variant) or a frames.h5 store
      labelled:
        planes: planes/                # train.csv, valid.csv, test.csv (image_path,class)
    ingest: {size: 64, val_fraction: 0.1}
    variants:                          # pretraining-data variants: ingest options each
      all: {frame_skip: 2}
      half-clips: {frame_skip: 2, clips: 60}
    pretrain:
      preset: cpu                      # cpu | paper, per-method recipes from the preset
      methods: [barlowtwins, simclr]
      pairs: [augment, temporal]
      variants: [all, half-clips]
      seeds: [0, 1, 2]                 # optional: repeat each pretraining per seed (names end -s<seed>)
      keep: all                        # or best: evaluate only the seed whose features score best on valid
      exclude: [simclr/temporal]       # optional: METHOD/PAIRS combinations not to run
      options: {epochs: 8}             # any `sonossl pretrain` key
    evaluate:
      inits: [random, imagenet, pretrained]   # 'pretrained' = every declared pretraining
      protocols: [linear, finetune]
      fractions: [1, 10, 100]
      seeds: [0, 1, 2]
      selection: [random, typiclust]   # which images a fraction labels (default [random]; docs/selection.md)
      options: {batch_size: 32}        # any `sonossl evaluate` key

Relative paths are relative to the study file. A pretraining is named
``<method>-<pairs>-<variant>`` (``...-s<seed>`` when ``pretrain.seeds`` repeats it per seed); an evaluation of it points at its :class:`PretrainUnit`.
With ``keep: best`` the seeds are draws of one recipe: a :class:`SelectUnit` named ``...-best`` probes
each on the valid split and every evaluation of ``pretrained`` uses the winner. The
image size is stated once, by ``ingest.size`` (or the frame store given as ``data.unlabelled``):
it is the default of every pretraining and evaluation, above the preset. Every problem (unknown key, wrong type, fraction outside
(0, 100], an init naming an undeclared pretraining, an option `pretrain`/`evaluate` would refuse,
a missing path) is one :class:`SonosslError` line naming the key, raised before any run starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from sonossl.config import (BASELINE_INITS, EvaluateConfig, IngestConfig, PretrainConfig, build_config,
                            check_fractions, deep_merge, read_config_file, read_preset, resolve_image_size, validated)
from sonossl.data.framestore import is_store_path
from sonossl.downstream.protocol import selection_label
from sonossl.errors import SonosslError

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")  # a study's, dataset's or variant's name: one folder name

STUDY_PRESET_DIR = Path(__file__).parent / "presets"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataSpec(_Strict):
    unlabelled: Path | None = None  # folder/files of clips, or a frames .h5 store
    labelled: dict[str, Path] = Field(min_length=1)


# A study's ``ingest:`` block: these fields of IngestConfig, with their types, defaults and bounds
# (one owner), except that a study's default key is one for all its variants.
IngestSpec = create_model(
    "IngestSpec", __base__=_Strict,
    **{name: (IngestConfig.model_fields[name].annotation, IngestConfig.model_fields[name])
       for name in ("size", "val_fraction", "crop", "modality", "max_frame_pixels", "max_source_pixels")},
    salt_file=(Path | None, Field(None, description="the pseudonym key; none: data/sonossl.key in the study folder, "
                                                      "one for every variant")),
)


# A pretraining-data variant: how the unlabelled clips are curated (variance vs size). Its
# curation settings are IngestConfig's fields (one owner), except that a variant keeps every
# frame unless told (frame_skip 1); `clips` keeps that many clips, a seeded draw of the sources.
VariantSpec = create_model(
    "VariantSpec", __base__=_Strict,
    frame_skip=(int, FieldInfo.merge_field_infos(IngestConfig.model_fields["frame_skip"], default=1)),
    clips=(int | None, Field(None, gt=0, description="keep this many clips, a seeded draw of the sources")),
    **{name: (IngestConfig.model_fields[name].annotation, IngestConfig.model_fields[name])
       for name in ("max_frames_per_video", "dedup")},
)


class PretrainGrid(_Strict):
    preset: Literal["cpu", "paper"] = "cpu"
    methods: list[str] = Field(min_length=1)
    pairs: list[Literal["augment", "temporal"]] = Field(default_factory=lambda: ["augment"], min_length=1)
    variants: list[str] = Field(default_factory=lambda: ["all"], min_length=1)
    # None: one pretraining each, with `options.seed` (default 0); a list: one per seed, named -s<seed>,
    # so a finding can be told from the pretraining's own seed-to-seed spread
    seeds: list[int] | None = Field(None, min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
    # METHOD/PAIRS combinations of the grid not to run, e.g. ae/temporal (the autoencoder takes one view)
    exclude: list[str] = Field(default_factory=list)
    # all: every seed is an init of its own; best: the seeds are draws of one recipe, and the evaluations
    # of `pretrained` use the one whose frozen features score best on the valid split (SelectUnit)
    keep: Literal["all", "best"] = "all"

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"repeated seed in {v}")
        return v

    @model_validator(mode="after")
    def _draws(self) -> "PretrainGrid":
        if self.keep == "best" and len(self.seeds or []) < 2:
            raise ValueError("keep: best chooses among seeds: give pretrain.seeds two or more")
        return self


class ProtocolGrid(_Strict):
    """What one protocol does differently from the evaluate grid: its own fractions, seeds or
    options (e.g. fine-tuning, the expensive protocol, only at 100 % with longer runs)."""

    fractions: list[float] | None = None
    seeds: list[int] | None = Field(None, min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else check_fractions(v)


class _EvaluateGridBase(_Strict):
    """What an evaluate grid adds to the axes it shares with ``sonossl evaluate``."""

    datasets: list[str] | None = None  # default: every labelled dataset
    inits: list[str] = Field(default_factory=lambda: [*BASELINE_INITS, "pretrained"], min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
    per_protocol: dict[Literal["linear", "finetune"], ProtocolGrid] = Field(default_factory=dict)

    @field_validator("fractions", check_fields=False)
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        return check_fractions(v)

    @field_validator("selection", check_fields=False)
    @classmethod
    def _selection(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


def _axis(name: str, *, as_list: bool = False):
    """A grid axis with the type and default of ``EvaluateConfig.<name>`` (one owner), never empty;
    ``as_list``: a list of the field's values (the field takes one)."""
    f = EvaluateConfig.model_fields[name]
    if as_list:
        return list[f.annotation], Field(default_factory=lambda: [f.default], min_length=1, description=f.description)
    return f.annotation, Field(default_factory=f.default_factory, min_length=1, description=f.description)


# An evaluate grid: the protocols, fractions, seeds and selections of EvaluateConfig, each a list here.
EvaluateGrid = create_model("EvaluateGrid", __base__=_EvaluateGridBase, protocols=_axis("protocol"),
                            fractions=_axis("fractions"), seeds=_axis("seeds"), selection=_axis("selection", as_list=True))


class StudySpec(_Strict):
    name: str = "study"
    data: DataSpec
    ingest: IngestSpec = Field(default_factory=IngestSpec)
    variants: dict[str, VariantSpec] = Field(default_factory=lambda: {"all": VariantSpec()})
    pretrain: PretrainGrid | None = None
    evaluate: EvaluateGrid = Field(default_factory=EvaluateGrid)
    context: dict[str, str] = Field(default_factory=dict)  # free text for the report: data, aims

    @model_validator(mode="after")
    def _safe_names(self) -> "StudySpec":
        """Names that become folder and file names stay inside the study folder."""
        named = [("name", self.name), *((f"data.labelled: {k!r}", k) for k in self.data.labelled),
                 *((f"variants: {k!r}", k) for k in self.variants)]
        for where, name in named:
            if not SAFE_NAME.fullmatch(name) or name in (".", "..") or ".." in name:
                raise ValueError(f"{where}: expected a name of letters, digits, '.', '_' and '-' (no '..'), as it "
                                 "becomes a folder name inside the study folder")
        return self


# ------------------------------------------------------------------------------------------ units
@dataclass(frozen=True)
class IngestUnit:
    variant: str
    options: dict[str, Any]

    @property
    def key(self) -> str:
        return f"ingest/{self.variant}"

    def deps(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class PretrainUnit:
    name: str
    method: str
    pairs: str
    variant: str
    config: dict[str, Any]  # PretrainConfig values, paths filled in by the runner
    needs_ingest: bool = True

    @property
    def key(self) -> str:
        return f"pretrain/{self.name}"

    def deps(self) -> tuple[str, ...]:
        return (f"ingest/{self.variant}",) if self.needs_ingest else ()


@dataclass(frozen=True)
class SelectUnit:
    """The best of a recipe's seeded draws (``pretrain.keep: best``), chosen on the valid split: each
    draw's frozen features get the linear probe on every train label (the grid's linear options,
    ``SELECT_SEEDS``), and the draw with the best validation balanced accuracy is what the evaluations
    of ``name`` start from. The test split is not read. Its folder ``pretrain/<name>/`` holds the
    winner's files and ``selection.json``."""

    name: str
    draws: tuple[PretrainUnit, ...]
    dataset: str
    config: dict[str, Any]  # EvaluateConfig values of the probe

    @property
    def key(self) -> str:
        return f"select/{self.name}"

    method = property(lambda self: self.draws[0].method)  # what every draw shares
    pairs = property(lambda self: self.draws[0].pairs)
    variant = property(lambda self: self.draws[0].variant)

    def deps(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.draws)


SELECT_SEEDS = (0, 1, 2)  # probe seeds a draw's validation score is the mean of


@dataclass(frozen=True)
class EvalUnit:
    dataset: str
    init: str  # random | imagenet | the name of `pretrain`
    protocol: str
    fraction: float
    seed: int
    config: dict[str, Any] = field(hash=False, compare=False, default_factory=dict)
    pretrain: PretrainUnit | SelectUnit | None = field(default=None, hash=False, compare=False)  # the init's pretraining
    selection: str = "random"  # random: the stratified draw; else a strategy (key and folder INIT@STRATEGY)

    @property
    def label(self) -> str:
        return selection_label(self.init, self.selection)

    @property
    def key(self) -> str:
        return f"eval/{self.dataset}/{self.label}/{self.protocol}/{self.fraction:g}/{self.seed}"

    @property
    def folder(self) -> str:
        return f"evals/{self.dataset}/{self.label}/{self.protocol}-{self.fraction:g}-s{self.seed}"

    def deps(self) -> tuple[str, ...]:
        return () if self.pretrain is None else (self.pretrain.key,)


@dataclass
class Plan:
    """The expanded study: units in the order they are run and reported."""

    spec: StudySpec
    root: Path  # the folder relative paths are resolved against
    ingests: list[IngestUnit]
    pretrains: list[PretrainUnit]
    evals: list[EvalUnit]
    selects: list[SelectUnit] = field(default_factory=list)

    @property
    def units(self) -> list:
        return [*self.ingests, *self.pretrains, *self.selects, *self.evals]

    def missing_paths(self) -> list[str]:
        """One line per declared path that does not exist (checked before any run starts)."""
        out = []
        d = self.spec.data
        if d.unlabelled is not None and self.pretrains and not d.unlabelled.exists():
            out.append(f"data.unlabelled: {d.unlabelled} not found")
        for name, path in d.labelled.items():
            if name in self.datasets and not path.exists():
                out.append(f"data.labelled.{name}: {path} not found")
        return out

    @property
    def datasets(self) -> list[str]:
        return list(self.spec.evaluate.datasets or self.spec.data.labelled)

    def describe(self, sample: int = 5) -> str:
        ev = self.spec.evaluate
        inits = sorted({u.init for u in self.evals}, key=lambda i: (i not in BASELINE_INITS, i))
        lines = [f"study {self.spec.name!r}: {len(self.ingests)} ingestions, {len(self.pretrains)} pretrainings, "
                 f"{len(self.evals)} evaluations",
                 f"  evaluations = {len(self.datasets)} datasets x {len(inits)} inits x ("
                 + " + ".join(f"{p}: {len({u.fraction for u in self.evals if u.protocol == p})} fractions x "
                              f"{len({u.seed for u in self.evals if u.protocol == p})} seeds" for p in ev.protocols) + ")"
                 + (f" x {len(ev.selection)} selections ({', '.join(ev.selection)})" if len(ev.selection) > 1 else ""),
                 f"  inits: {', '.join(inits)}"]
        if self.pretrains:
            pg = self.spec.pretrain
            lines.append(f"  pretrainings = {len(pg.methods)} methods x {len(pg.pairs)} pairs modes x "
                         f"{len(pg.variants)} data variants" + (f" x {len(pg.seeds)} seeds" if pg.seeds else "")
                         + (f", less {', '.join(pg.exclude)}" if pg.exclude else "") + f" (preset {pg.preset})"
                         + (", the best seed of each chosen on valid" if self.selects else ""))
        step = max(1, len(self.units) // sample)
        lines.append("  sample: " + "; ".join(u.key for u in self.units[::step][:sample]))
        return "\n".join(lines)


def _resolve(path: Path | None, root: Path) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def load_study(path: Path | str | None = None, *, preset: str | None = None,
               overrides: dict[str, Any] | None = None) -> Plan:
    """Read ``study.yaml`` (or a built-in ``preset``, overlaid by ``path`` when both are given),
    validate it and expand it into a :class:`Plan`."""
    values: dict[str, Any] = {}
    root = Path.cwd()
    if preset is not None:
        p = STUDY_PRESET_DIR / f"{preset}.yaml"
        if not p.is_file():
            names = sorted(q.stem for q in STUDY_PRESET_DIR.glob("*.yaml"))
            raise SonosslError(f"unknown study preset {preset!r}; expected one of: {', '.join(names)}")
        values = read_config_file(p)
    if path is not None:
        path = Path(path)
        values = deep_merge(values, read_config_file(path))
        root = path.resolve().parent
    if overrides:
        values = deep_merge(values, overrides)
    if not values:
        raise SonosslError("study: give a study file or --preset")
    source = str(path) if path is not None else f"preset {preset}"
    return expand(validated(StudySpec, values, source), root, source)


def expand(spec: StudySpec, root: Path, source: str = "study") -> Plan:
    """Resolve paths and expand the grids; errors name the key."""
    spec = spec.model_copy(deep=True)
    spec.data.unlabelled = _resolve(spec.data.unlabelled, root)
    spec.data.labelled = {k: _resolve(v, root) for k, v in spec.data.labelled.items()}
    spec.ingest.salt_file = _resolve(spec.ingest.salt_file, root)
    ingests, pretrains = _expand_pretrains(spec, source)
    selects = _expand_selects(spec, pretrains, source)
    evals = _expand_evals(spec, pretrains, selects, source)
    if not evals and not pretrains:
        raise SonosslError(f"{source}: the study declares no runs")
    return Plan(spec, root, ingests, pretrains, evals, selects)


def image_size(spec: StudySpec) -> int:
    """The study's one image size, the default of its pretrainings and evaluations (above the
    preset; :func:`~sonossl.data.framestore.resolve_image_size` of what is stored): the frame
    store's size when ``data.unlabelled`` is one, else the ``ingest.size`` it will be written at."""
    store = spec.data.unlabelled
    if is_store_path(store) and store.exists():
        from sonossl.data.framestore import FrameStore

        return resolve_image_size(None, stored=FrameStore(store).frame_size)
    return resolve_image_size(None, stored=spec.ingest.size)


def _expand_pretrains(spec: StudySpec, source: str) -> tuple[list[IngestUnit], list[PretrainUnit]]:
    """Ingestions (one per data variant) and pretrainings (method x pairs x variant), each
    pretraining config validated, its method's checks included (:func:`validate_method`)."""
    from sonossl.methods import METHODS, validate_method

    pg = spec.pretrain
    if pg is None:
        return [], []
    store_given = is_store_path(spec.data.unlabelled)
    if spec.data.unlabelled is None:
        raise SonosslError(f"{source}: data.unlabelled is required when pretrainings are declared")
    for m in pg.methods:
        if m not in METHODS:
            raise SonosslError(f"{source}: pretrain.methods: unknown method {m!r}; expected one of: {', '.join(METHODS)}")
    for v in pg.variants:
        if v not in spec.variants:
            raise SonosslError(f"{source}: pretrain.variants: {v!r} is not declared under variants "
                               f"(declared: {', '.join(spec.variants)})")
        if store_given and spec.variants[v] != VariantSpec():
            raise SonosslError(f"{source}: variants.{v}: data.unlabelled is a frame store, which is used as is; "
                               "variant options need clips to ingest")
    for key in ("method", "frames", "out", "pairs"):
        if key in pg.options:
            raise SonosslError(f"{source}: pretrain.options.{key}: set by the study grid, not an option")
    if pg.seeds is not None and "seed" in pg.options:
        raise SonosslError(f"{source}: pretrain.options.seed: the seeds are pretrain.seeds {pg.seeds}; give one or the other")
    grid = {f"{m}/{p}" for m in pg.methods for p in pg.pairs}
    for combo in pg.exclude:
        if combo not in grid:
            raise SonosslError(f"{source}: pretrain.exclude: {combo!r} is not a METHOD/PAIRS combination of the grid "
                               f"({', '.join(sorted(grid))})")
    ingests = [] if store_given else [IngestUnit(v, {**spec.ingest.model_dump(), **spec.variants[v].model_dump()})
                                      for v in pg.variants]
    pretrains = []
    for method in pg.methods:
        for pairs in (p for p in pg.pairs if f"{method}/{p}" not in pg.exclude):
            cfg = deep_merge({**read_preset(pg.preset, method), "image_size": image_size(spec)},
                             {**pg.options, "method": method, "pairs": pairs})
            where = f"{source}: pretrain ({method}, {pairs})"
            try:
                validate_method(build_config(PretrainConfig, cfg, source=where))
            except SonosslError as exc:
                raise SonosslError(exc.args[0] if str(exc).startswith(source) else f"{where}: {exc}") from None
            for seed in pg.seeds or [None]:  # seed outermost: a study stopped early has every variant at seed 0
                for variant in pg.variants:
                    name, unit_cfg = f"{method}-{pairs}-{variant}", cfg
                    if seed is not None:
                        name, unit_cfg = f"{name}-s{seed}", {**cfg, "seed": seed}
                    pretrains.append(PretrainUnit(name, method, pairs, variant, unit_cfg, needs_ingest=not store_given))
    return ingests, pretrains


def _expand_selects(spec: StudySpec, pretrains: list[PretrainUnit], source: str) -> list[SelectUnit]:
    """With ``pretrain.keep: best``: one :class:`SelectUnit` per method, pairs mode and variant over
    its seeds, probing on the first evaluated dataset with the linear protocol's options."""
    if spec.pretrain is None or spec.pretrain.keep != "best":
        return []
    datasets = list(spec.evaluate.datasets or spec.data.labelled)
    probe = {p: cfg for p, _, _, cfg in _protocol_grids(spec, source)}.get(
        "linear", {"image_size": image_size(spec), **spec.evaluate.options})
    groups: dict[str, list[PretrainUnit]] = {}
    for unit in pretrains:
        groups.setdefault(f"{unit.method}-{unit.pairs}-{unit.variant}-best", []).append(unit)
    return [SelectUnit(name, tuple(draws), datasets[0], probe) for name, draws in groups.items()]


def _expand_evals(spec: StudySpec, pretrains: list[PretrainUnit], selects: list[SelectUnit],
                  source: str) -> list[EvalUnit]:
    """Evaluations: datasets x inits x protocols x fractions x seeds; an init that names a
    pretraining points at its :class:`PretrainUnit` (or, for the best of its seeds, its
    :class:`SelectUnit`); ``pretrained`` is every pretraining, or every best one when chosen."""
    ev = spec.evaluate
    datasets = list(ev.datasets or spec.data.labelled)
    for d in datasets:
        if d not in spec.data.labelled:
            raise SonosslError(f"{source}: evaluate.datasets: {d!r} is not declared under data.labelled "
                               f"(declared: {', '.join(spec.data.labelled)})")
    by_name: dict[str, PretrainUnit | SelectUnit] = {p.name: p for p in [*pretrains, *selects]}
    inits: dict[str, PretrainUnit | SelectUnit | None] = {}
    for i in ev.inits:
        if i == "pretrained":
            inits.update({p.name: p for p in selects or pretrains})
        elif i in BASELINE_INITS:
            inits[i] = None
        elif i in by_name:
            inits[i] = by_name[i]
        else:
            raise SonosslError(f"{source}: evaluate.inits: {i!r} is neither random, imagenet, pretrained nor a declared "
                               f"pretraining (declared: {', '.join(by_name) or 'none'})")
    names = list(inits)
    grids = _protocol_grids(spec, source)
    ladder = sorted({f for _, fractions, _, _ in grids for f in fractions})  # one ladder: the same subset per fraction
    evals = [EvalUnit(d, i, p, f, s, _with_selection(cfg, sel, ladder), inits[i], sel)
             for p, fractions, seeds, cfg in grids for d in datasets for i in names for sel in ev.selection
             for f in fractions for s in seeds]
    # seed outside fraction and init: a study stopped early has every init at the same seeds, so what
    # finished is already paired (the cheap protocol first, as it is listed first by default)
    order = {(p, s): k for k, (p, s) in enumerate((p, s) for p, _, seeds, _ in grids for s in seeds)}
    evals.sort(key=lambda u: (datasets.index(u.dataset), order[u.protocol, u.seed], u.fraction, names.index(u.init),
                              ev.selection.index(u.selection)))
    return evals


def _with_selection(cfg: dict[str, Any], selection: str, ladder: list[float]) -> dict[str, Any]:
    """A unit's evaluate options: the random draw keeps them as they are (its key and hash are those
    of a study without the axis); a strategy's subsets nest along the study's fractions (``ladder``),
    so a fraction's subset is the same in every unit that labels it."""
    return cfg if selection == "random" else {**cfg, "selection": selection, "selection_fractions": ladder}


def _protocol_grids(spec: StudySpec, source: str) -> list[tuple[str, list[float], list[int], dict[str, Any]]]:
    """(protocol, fractions, seeds, evaluate options) per protocol, ``per_protocol`` over the grid's own."""
    ev = spec.evaluate
    for p in ev.per_protocol:
        if p not in ev.protocols:
            raise SonosslError(f"{source}: evaluate.per_protocol.{p}: not among evaluate.protocols ({', '.join(ev.protocols)})")
    grids = []
    for p in ev.protocols:
        over = ev.per_protocol.get(p, ProtocolGrid())
        for where, opts in (("evaluate.options", ev.options), (f"evaluate.per_protocol.{p}.options", over.options)):
            for key in ("init", "out", "labels", "train_csv", "val_csv", "test_csv", "protocol", "fractions", "seeds",
                        "selection", "selection_fractions"):
                if key in opts:
                    raise SonosslError(f"{source}: {where}.{key}: set by the study grid, not an option")
        cfg = {"image_size": image_size(spec), **ev.options, **over.options}
        build_config(EvaluateConfig, cfg, source=f"{source}: evaluate options ({p})")
        grids.append((p, over.fractions or ev.fractions, over.seeds or ev.seeds, cfg))
    return grids
