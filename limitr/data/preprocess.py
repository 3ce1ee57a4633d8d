"""A MIMIC-CXR-JPG root (real or synthetic), an IU X-ray root or a CSV manifest to Parquet
shards, in parallel and streaming.

Each source has one reader that plans :class:`~limitr.data.mimic.StudyPlan` records
(:mod:`limitr.data.mimic`, :mod:`limitr.data.iu`, :mod:`limitr.data.manifest`); everything
after planning is shared. For IU and manifests report.json adds a ``source`` section (layout,
view source, placeholders removed, split fractions and seed), the class-retrieval table is
built from the test split (:func:`limitr.data.sources.class_items_from_test`), and the stage
writes ``split.csv`` (patient_id, study_id, split). The bad-record names of those readers are
listed in their modules.

``plan_preprocess`` reads the metadata and plans every study (no image is touched);
``run_preprocess`` hands the studies to worker processes in a bounded window (memory does
not grow with the number of studies), writes the rows in plan order (the output does not
depend on the number of workers) and returns the report.

What happens to bad input (each name is a key of ``report.json``):

========================  ========  ==================================================
input problem             outcome   reason
========================  ========  ==================================================
study not in split file   skipped   ``not_in_split``
no split value            skipped   ``split_unknown`` (every split cell of the study
                                    empty or not train/validate/test)
no PA/AP image            skipped   ``lateral_only``, ``no_frontal_view_empty``,
                                    ``no_frontal_view_unknown``, ``no_frontal_view``
report file absent        skipped   ``report_missing`` (``report_unreadable``: bad zip entry)
report empty              skipped   ``report_empty``
no usable text at all     skipped   ``report_no_text``
no FINDINGS/IMPRESSION    degraded  ``text_from_last_paragraph`` (when a last paragraph exists)
report not UTF-8          degraded  ``report_not_utf8`` (decoded as Windows-1252)
frontal image bad         skipped   ``frontal_image_{missing,empty,truncated,corrupt,too_large}``;
                                    degraded with the same name when another frontal
                                    of the study was usable and taken instead
lateral image bad         degraded  ``lateral_image_{missing,empty,truncated,corrupt,too_large}``
                                    (the frontal is kept, the lateral is null)
ViewPosition empty        degraded  ``view_empty`` (image ignored) or
                                    ``view_from_code_meaning`` (view recovered)
ViewPosition not PA, AP,  degraded  ``view_unknown`` (image ignored; rare views of the
LATERAL or LL                       release such as SWIMMERS or LAO included)
metadata or split cell    degraded  ``metadata_cell_missing`` (ids recovered from the
empty                               split file, a missing date/time sorts last, the split
                                    taken from the study's other images)
study not in chexpert     degraded  ``labels_missing`` (labels null)
dicom_id not a plain      skipped   ``bad_dicom_id`` when no other frontal is left (the
file name (``../x``)                row is never opened; listed under rows_dropped)
subject_id / study_id     row       ``bad_subject_id`` / ``bad_study_id`` under
not a number              dropped   ``rows_dropped`` (when not recoverable from split)
label not 1/0/-1/empty    degraded  ``label_invalid`` (that label null)
========================  ========  ==================================================

``too_large``: more pixels than ``max_pixels`` (preprocess.max_pixels), refused from the
image header before decoding. ``report.json`` also accounts for every metadata row:
``rows_read`` = ``rows_used`` + the rows listed under ``rows_dropped`` by reason.

An empty label cell means "not mentioned" in the release, so it is a null label, not a
fault. A skipped study is listed under one reason only and not under ``degraded``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from limitr.data import tables
from limitr.data.images import MAX_PIXELS, BadImage, Geometry, process_image_file
from limitr.data.mimic import ImageRef, ReportSource, RowReport, StudyPlan, image_path, plan_studies_and_rows
from limitr.data.reports import parse_report
from limitr.data.tables import Outcome, read_report_text
from limitr.data.schema import (CHEXPERT_LABELS, CLASS_RETRIEVAL_SCHEMA, GROUNDING_SCHEMA, SPLITS,
                                STUDY_SCHEMA)
from limitr.data.shards import ParquetSink, ShardWriter
from limitr.errors import LimitrError
from limitr.settings import default_of
from limitr.progress import ProgressFn, advance


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything the preprocess stage needs; paths as the user gives them."""

    mimic_root: Path
    reports: Path
    image_size: int = default_of("preprocess", "image_size")
    workers: int = 1
    shard_size: int = default_of("preprocess", "shard_size")
    num_shards: int = 1
    shard_index: int = 0
    ms_cxr: Optional[Path] = None
    class_retrieval: Optional[Path] = None
    max_pixels: int = MAX_PIXELS
    #: mimic (MIMIC-CXR-JPG layout, real or synthetic) | iu (IU X-ray, either layout) | manifest
    source: str = default_of("preprocess", "source")
    iu_root: Optional[Path] = None
    iu_layout: str = default_of("preprocess", "iu_layout")
    iu_images: Optional[Path] = None
    iu_projections: Optional[Path] = None
    manifest: Optional[Path] = None
    manifest_root: Optional[Path] = None
    manifest_columns: tuple[tuple[str, str], ...] = ()
    split_fractions: tuple[float, float, float] = default_of("preprocess", "split_fractions")
    split_seed: int = default_of("preprocess", "split_seed")


SOURCES: tuple[str, ...] = ("mimic", "iu", "manifest")


@dataclass
class PreprocessPlan:
    """The work of one run: this shard's studies and, on shard 0, the evaluation tables."""

    config: PreprocessConfig
    studies: list[StudyPlan]
    grounding: list[tables.GroundingTask] = field(default_factory=list)
    class_items: list[tables.ClassItemTask] = field(default_factory=list)
    rows: RowReport = field(default_factory=RowReport)
    #: sources other than MIMIC-CXR: report.json's ``source`` section and the split file rows
    source_info: Optional[dict[str, Any]] = None
    split_rows: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def n_units(self) -> int:
        """Studies + phrases + class items: the total of the progress callback."""
        return len(self.studies) + len(self.grounding) + len(self.class_items)


def plan_preprocess(config: PreprocessConfig) -> PreprocessPlan:
    """Read the metadata and plan the run; fatal problems raise LimitrError."""
    if config.image_size < 8:
        raise LimitrError(f"image size must be at least 8 pixels, got {config.image_size}")
    if config.num_shards < 1 or not 0 <= config.shard_index < config.num_shards:
        raise LimitrError(
            f"--shard-index must be in [0, --num-shards); got {config.shard_index} of {config.num_shards}"
        )
    if config.source != "mimic":
        return _plan_other_source(config)
    root = Path(config.mimic_root)
    all_studies, rows = plan_studies_and_rows(root)
    ReportSource(Path(config.reports))  # validates the zip or folder now: a fatal error early
    # by patient, so a patient's studies (and its split) stay together in one part
    studies = [p for p in all_studies if p.subject_id % config.num_shards == config.shard_index]
    plan = PreprocessPlan(config, studies, rows=rows)
    if config.shard_index == 0:  # the evaluation tables are written once, by part 0
        ids_of = {ref.dicom_id: (p.subject_id, p.study_id)
                  for p in all_studies for ref in (*p.frontals, *p.laterals)}
        if config.ms_cxr is not None:
            plan.grounding = tables.plan_grounding(Path(config.ms_cxr), root, ids_of)
        if config.class_retrieval is not None:
            plan.class_items = tables.plan_class_items(Path(config.class_retrieval), root, ids_of)
    return plan


def _plan_other_source(config: PreprocessConfig) -> PreprocessPlan:
    """IU X-ray or a manifest: the reader's plans; the class-retrieval table from the test
    split (part 0 only). MS-CXR and a CheXpert 5x200 CSV belong to MIMIC-CXR and are not read."""
    from limitr.data import iu, manifest, sources

    if config.source == "iu":
        if config.iu_root is None:
            raise LimitrError("preprocess.source is iu but preprocess.iu_root is not set (the IU X-ray download)")
        found = iu.plan_iu(Path(config.iu_root), config.iu_layout, config.iu_images, config.iu_projections,
                           config.split_fractions, config.split_seed)
        root = Path(config.iu_root)
    elif config.source == "manifest":
        if config.manifest is None:
            raise LimitrError("preprocess.source is manifest but preprocess.manifest is not set (the CSV)")
        found = manifest.plan_manifest(Path(config.manifest), config.manifest_root,
                                       dict(config.manifest_columns), config.split_fractions, config.split_seed)
        root = Path(config.manifest_root) if config.manifest_root is not None else Path(config.manifest).parent
    else:
        raise LimitrError(f"preprocess.source {config.source!r} is not one of {', '.join(SOURCES)}")
    info = dict(found.info)
    ignored = [name for name, value in (("ms_cxr", config.ms_cxr), ("class_retrieval", config.class_retrieval))
               if value is not None]
    if ignored:
        info["ignored_settings"] = ignored
    info.update(split_fractions=list(config.split_fractions), split_seed=config.split_seed)
    studies = [p for p in found.studies if p.subject_id % config.num_shards == config.shard_index]
    plan = PreprocessPlan(config, studies, rows=found.rows, source_info=info, split_rows=found.split_rows)
    if config.shard_index == 0:
        plan.class_items = sources.class_items_from_test(found.studies, root, config.split_seed)
    return plan


# -- worker side ------------------------------------------------------------------------

@dataclass
class _WorkerContext:
    root: Path
    reports: ReportSource
    image_size: int
    max_pixels: Optional[int] = MAX_PIXELS


_CONTEXT: Optional[_WorkerContext] = None


def _init_worker(root: Path, reports: ReportSource, image_size: int,
                 max_pixels: Optional[int] = MAX_PIXELS) -> None:
    global _CONTEXT
    _CONTEXT = _WorkerContext(Path(root), reports, int(image_size), max_pixels)


def _set_context(ctx: Optional[_WorkerContext]) -> None:
    global _CONTEXT
    _CONTEXT = ctx


def _first_usable(refs: Sequence[ImageRef], plan: StudyPlan, ctx: _WorkerContext
                  ) -> tuple[Optional[tuple[ImageRef, bytes, Geometry]], list[str]]:
    """The first image of ``refs`` that decodes, and the reasons of those that did not."""
    failures: list[str] = []
    for ref in refs:
        try:
            path = Path(ref.path) if ref.path is not None else image_path(
                ctx.root, plan.subject_id, plan.study_id, ref.dicom_id)
            png, geometry = process_image_file(path, ctx.image_size, max_pixels=ctx.max_pixels)
        except BadImage as exc:
            failures.append(exc.reason)
            continue
        return (ref, png, geometry), failures
    return None, failures


def process_study(plan: StudyPlan, ctx: _WorkerContext) -> Outcome:
    """One study -> its row, or the reason it is skipped."""
    if plan.skip:
        return Outcome(plan.study_id, None, plan.skip)
    degraded = set(plan.degraded)
    if plan.report is not None:  # IU and manifest sources: the reader prepared the text
        parsed = plan.report
        text = parsed.text
    else:
        raw, skip, notes = read_report_text(ctx.reports, plan.subject_id, plan.study_id)
        if raw is None:
            return Outcome(plan.study_id, None, skip)
        degraded.update(notes)
        parsed = parse_report(raw)
        text = parsed.model_text
        if not text:
            return Outcome(plan.study_id, None, "report_no_text")
        if parsed.text_source == "last_paragraph":
            degraded.add("text_from_last_paragraph")

    frontal, failures = _first_usable(plan.frontals, plan, ctx)
    if frontal is None:
        return Outcome(plan.study_id, None, f"frontal_image_{failures[0]}")
    degraded.update(f"frontal_image_{r}" for r in failures)
    lateral, failures = _first_usable(plan.laterals, plan, ctx)
    degraded.update(f"lateral_image_{r}" for r in failures[:1])

    f_ref, f_png, f_geom = frontal
    row: dict[str, Any] = {
        "subject_id": plan.subject_id, "study_id": plan.study_id, "split": plan.split,
        "frontal_dicom_id": f_ref.dicom_id, "frontal_view": f_ref.view, "frontal_image": f_png,
        **f_geom.columns("frontal_"),
        "text": text, "text_source": parsed.text_source,
        "findings": parsed.findings, "impression": parsed.impression,
        **dict(zip(CHEXPERT_LABELS, plan.labels)),
    }
    if lateral is not None:
        l_ref, l_png, l_geom = lateral
        row.update({"lateral_dicom_id": l_ref.dicom_id, "lateral_view": l_ref.view,
                    "lateral_image": l_png, **l_geom.columns("lateral_")})
    return Outcome(plan.study_id, row, None, tuple(sorted(degraded)))


def _process_unit(unit: Any) -> Outcome:
    ctx = _CONTEXT
    assert ctx is not None, "worker context not initialised"
    if isinstance(unit, StudyPlan):
        return process_study(unit, ctx)
    if isinstance(unit, tables.GroundingTask):
        return tables.process_grounding(unit, ctx.root, ctx.image_size, ctx.max_pixels)
    return tables.process_class_item(unit, ctx.reports, ctx.image_size, ctx.max_pixels)


def _process_chunk(units: list[Any]) -> list[Outcome]:
    return [_process_unit(u) for u in units]


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ordered_map(units: Iterable[Any], workers: int, init_args: tuple, chunk_size: int = 4,
                window_per_worker: int = 4) -> Iterator[Outcome]:
    """Outcomes of ``units`` in their order. At most ``workers * window_per_worker`` chunks
    are in flight, so memory is bounded whatever the number of units."""
    if workers <= 1:
        previous = _CONTEXT
        _init_worker(*init_args)
        try:
            for unit in units:
                yield _process_unit(unit)
        finally:
            _set_context(previous)
        return
    # forkserver: workers start from a clean process, not a fork of one holding threads
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                             initializer=_init_worker, initargs=init_args) as pool:
        pending: deque = deque()
        for chunk in _chunks(units, chunk_size):
            pending.append(pool.submit(_process_chunk, chunk))
            if len(pending) >= workers * window_per_worker:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


# -- the report ---------------------------------------------------------------------------

@dataclass
class _Tally:
    total: int = 0
    kept: int = 0
    skipped: dict[str, list[int]] = field(default_factory=dict)
    degraded: dict[str, list[int]] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.total += 1
        if outcome.row is None:
            self.skipped.setdefault(outcome.skipped or "unknown", []).append(outcome.key)
            return
        self.kept += 1
        for reason in outcome.degraded:
            self.degraded.setdefault(reason, []).append(outcome.key)

    def as_dict(self, total_key: str, kept_key: str) -> dict[str, Any]:
        return {
            total_key: self.total,
            kept_key: self.kept,
            "skipped": {k: sorted(v) for k, v in sorted(self.skipped.items())},
            "degraded": {k: sorted(v) for k, v in sorted(self.degraded.items())},
        }


def run_preprocess(plan: PreprocessPlan, out: Path, progress: ProgressFn = None) -> dict[str, Any]:
    """Write the shards of ``plan`` under ``out`` (an empty folder) and return the report:
    ``{"studies_total", "studies_kept", "skipped": {reason: [study_id]}, "degraded": {...}}``
    plus ``grounding`` / ``class_retrieval`` sections (keyed by phrase_id / item_id) when
    those tables were made."""
    cfg = plan.config
    out = Path(out)
    reports = ReportSource(Path(cfg.reports)) if cfg.source == "mimic" else None
    init_args = (Path(cfg.mimic_root), reports, cfg.image_size, cfg.max_pixels)
    units: list[Any] = [*plan.studies, *plan.grounding, *plan.class_items]
    n_studies, n_grounding = len(plan.studies), len(plan.grounding)
    number_of: Callable[[int], int] = lambda k: k * cfg.num_shards + cfg.shard_index
    writers = {s: ShardWriter(out / s, STUDY_SCHEMA, cfg.shard_size, number_of) for s in SPLITS}
    grounding_sink = ParquetSink(out / "grounding.parquet", GROUNDING_SCHEMA) if plan.grounding else None
    class_sink = ParquetSink(out / "class_retrieval.parquet", CLASS_RETRIEVAL_SCHEMA) if plan.class_items else None
    studies, grounding, class_items = _Tally(), _Tally(), _Tally()
    try:
        for index, outcome in enumerate(ordered_map(units, max(1, cfg.workers), init_args)):
            if index < n_studies:
                studies.add(outcome)
                if outcome.row is not None:
                    writers[outcome.row["split"]].write(outcome.row)
            elif index < n_studies + n_grounding:
                grounding.add(outcome)
                if outcome.row is not None and grounding_sink is not None:
                    grounding_sink.write(outcome.row)
            else:
                class_items.add(outcome)
                if outcome.row is not None and class_sink is not None:
                    class_sink.write(outcome.row)
            advance(progress)
    except BaseException:
        for sink in (*writers.values(), grounding_sink, class_sink):
            if sink is not None:
                sink.abort()
        raise
    for sink in (*writers.values(), grounding_sink, class_sink):
        if sink is not None:
            sink.close()
    report = studies.as_dict("studies_total", "studies_kept")
    if cfg.shard_index == 0:  # the rows of the metadata file, accounted for once
        report.update(plan.rows.as_dict())
    if cfg.ms_cxr is not None and cfg.shard_index == 0:
        report["grounding"] = grounding.as_dict("phrases_total", "phrases_kept")
    if cfg.class_retrieval is not None and cfg.shard_index == 0 and cfg.source == "mimic":
        report["class_retrieval"] = class_items.as_dict("items_total", "items_kept")
    if plan.source_info is not None:  # IU and manifest: the source, and the table built from test
        if cfg.shard_index == 0:
            report["class_retrieval"] = class_items.as_dict("items_total", "items_kept")
        report["source"] = plan.source_info
    return report


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The report of a whole run from the reports of its ``--num-shards`` parts."""
    merged: dict[str, Any] = {}
    for key, total_key, kept_key in (("", "studies_total", "studies_kept"),
                                     ("grounding", "phrases_total", "phrases_kept"),
                                     ("class_retrieval", "items_total", "items_kept")):
        parts = [r.get(key) if key else r for r in reports]
        parts = [p for p in parts if p]
        if not parts:
            continue
        tally = _Tally(sum(p[total_key] for p in parts), sum(p[kept_key] for p in parts))
        for p in parts:
            for group, target in (("skipped", tally.skipped), ("degraded", tally.degraded)):
                for reason, ids in p[group].items():
                    target.setdefault(reason, []).extend(ids)
        section = tally.as_dict(total_key, kept_key)
        if key:
            merged[key] = section
        else:
            merged.update(section)
    for r in reports:  # written by part 0 only
        if "rows_read" in r:
            merged.update({k: r[k] for k in ("rows_read", "rows_used", "rows_dropped")})
        if "source" in r and "source" not in merged:
            merged["source"] = r["source"]
    return merged


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
