"""The four job kinds, each a sequence of stages: `train`, `distill`, `finetune`, and the
full `pipeline` (teacher -> student -> target, with the optional size search and
baseline). Each ends by exporting the served model and returning a `JobOutcome`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from app.core.archs import count_params
from app.core.datasets import InMemoryData
from app.schemas.job_spec import (
    DistillJobSpec,
    FinetuneJobSpec,
    PipelineJobSpec,
    TrainJobSpec,
    default_evaluate,
)
from app.schemas.model_spec import ModelSpec, SizeSearch
from worker.build import Trained, build_from_spec, build_model, retarget, same_classes
from worker.context import JobContext, JobFailedError, JobOutcome
from worker.distill import distill
from worker.export import export_model
from worker.int8_export import Int8Plan, add_int8, int8_plan
from worker.quantize import Int8Result
from worker.report import comparison, figures, int8_text, serving_figures, summary
from worker.size_search import (
    budget_violation,
    choose_candidate,
    has_budget,
    int8_choice,
    int8_entry,
    report_candidates,
)
from worker.sources import resolve_source
from worker.stages import finetune, obtain_teacher, train_from_scratch
from worker.train import evaluate

log = logging.getLogger(__name__)

AnySpec = TrainJobSpec | DistillJobSpec | FinetuneJobSpec | PipelineJobSpec


def run_job_kind(ctx: JobContext, spec: AnySpec, *, model_id: str) -> JobOutcome:
    """Dispatch on the spec's kind."""
    if isinstance(spec, TrainJobSpec):
        return run_train(ctx, spec, model_id=model_id)
    if isinstance(spec, DistillJobSpec):
        return run_distill(ctx, spec, model_id=model_id)
    if isinstance(spec, FinetuneJobSpec):
        return run_finetune(ctx, spec, model_id=model_id)
    if isinstance(spec, PipelineJobSpec):
        return run_pipeline(ctx, spec, model_id=model_id)
    raise JobFailedError("bad_spec", f"unknown job kind {getattr(spec, 'kind', None)!r}")


def run_train(ctx: JobContext, spec: TrainJobSpec, *, model_id: str) -> JobOutcome:
    """Supervised training of `spec.model` on `spec.train`, evaluated on `spec.evaluate`."""
    data = ctx.load_data(spec.train.dataset, seed=spec.seed)
    eval_data = _eval_data(ctx, spec, spec.train.dataset)
    trained = train_from_scratch(
        ctx, spec.model, spec.train, data=data, eval_data=eval_data, seed=spec.seed, stage="train"
    )
    return _outcome(ctx, trained, eval_data, model_id=model_id, int8=int8_plan(ctx, spec))


def run_distill(ctx: JobContext, spec: DistillJobSpec, *, model_id: str) -> JobOutcome:
    distill_data = ctx.load_data(spec.distill.dataset, seed=spec.seed)
    source = resolve_source(ctx.lookups, spec.teacher)
    teacher = obtain_teacher(ctx, source, data=distill_data, seed=spec.seed)
    student = distill(ctx, teacher, spec.student, spec.distill, seed=spec.seed)
    eval_data = _eval_data(ctx, spec, spec.distill.dataset)
    report = _comparison(
        ctx, teacher, _figures(ctx, student, eval_data), eval_data, strategy=None, seed=spec.seed
    )
    return _outcome(
        ctx, student, eval_data, model_id=model_id, report=report, int8=int8_plan(ctx, spec)
    )


def run_finetune(ctx: JobContext, spec: FinetuneJobSpec, *, model_id: str) -> JobOutcome:
    data = ctx.load_data(spec.finetune.dataset, seed=spec.seed)
    eval_data = _eval_data(ctx, spec, spec.finetune.dataset)
    source = resolve_source(ctx.lookups, spec.model)
    num_classes = data.num_classes if source.num_classes is None else source.num_classes
    net, config = build_model(
        source, data, num_classes, seed=spec.seed, torch_home=ctx.settings.torch_home
    )
    if source.trained_here:
        model = Trained(net.to(ctx.device), config, data.class_names, data.task)
    else:
        names = source.class_names or [str(i) for i in range(config.num_classes)]
        model = Trained(net.to(ctx.device), config, names, source.task)
    teacher = None
    if spec.teacher is not None:
        teacher_source = resolve_source(ctx.lookups, spec.teacher)
        teacher = obtain_teacher(ctx, teacher_source, data=data, seed=spec.seed)
    tuned = finetune(
        ctx, model, spec.finetune, data=data, eval_data=eval_data, teacher=teacher, seed=spec.seed
    )
    return _outcome(ctx, tuned, eval_data, model_id=model_id, int8=int8_plan(ctx, spec))


def run_pipeline(ctx: JobContext, spec: PipelineJobSpec, *, model_id: str) -> JobOutcome:
    """Teacher -> student -> target, in the order `spec.strategy` names."""
    seed = spec.seed
    target = ctx.load_data(spec.finetune.dataset, seed=seed)
    eval_data = _eval_data(ctx, spec, spec.finetune.dataset)
    distill_data = ctx.load_data(spec.distill.dataset, seed=seed)
    teacher = obtain_teacher(
        ctx, resolve_source(ctx.lookups, spec.teacher), data=distill_data, seed=seed
    )
    del distill_data  # each stage loads its own, filtered copy
    if spec.strategy == "finetune_then_distill":
        # Adapt the teacher to the target first: it then teaches the target's classes.
        teacher = _adapt_teacher(ctx, spec, teacher, target, eval_data)
    search = spec.student if isinstance(spec.student, SizeSearch) else None
    candidates = search.candidates if search is not None else [spec.student]
    assert all(isinstance(c, ModelSpec) for c in candidates)

    plan = int8_plan(ctx, spec)
    # Precision is one more dimension of the search (worker/size_search.py), where int8
    # is served: on a CPU.
    int8_search = plan if search is not None and ctx.serving_device.type == "cpu" else None
    int8_results: dict[int, Int8Result] = {}
    entries: list[dict[str, Any]] = []
    # Parallel to `entries`: the trained network of each (None when skipped untrained).
    students: list[Trained | None] = []
    for i, candidate in enumerate(candidates):
        suffix = f".c{i}" if search is not None else ""
        entry: dict[str, Any] = {
            "index": len(entries),
            "model": candidate.model_dump(exclude_none=True),
        }
        if int8_search is not None:
            entry.update(candidate=i, precision="fp32")
        over_budget = None
        if search is not None and has_budget(search.constraints):
            untrained = _untrained(ctx, candidate, target)
            untrained_figures = _figures(ctx, untrained, None)
            over_budget = reason = budget_violation(untrained_figures, search.constraints)
            if reason is not None and int8_search is not None:
                # Trained all the same when its int8 form fits (fewer bytes, faster).
                int8_over = int8_search.budget_violation(untrained, search.constraints)
                reason = None if int8_over is None else f"{reason}; int8: {int8_over}"
            if reason is not None:
                entries.append({**entry, "skipped": reason, **untrained_figures})
                students.append(None)
                continue
        student = distill(
            ctx, teacher, candidate, spec.distill, seed=seed, stage=f"distill{suffix}"
        )
        kd_teacher = teacher if spec.finetune.kd_weight > 0 else None
        student = finetune(
            ctx,
            student,
            spec.finetune,
            data=target,
            eval_data=eval_data,
            teacher=kd_teacher,
            seed=seed,
            stage=f"finetune{suffix}",
        )
        entries.append({**entry, "skipped": over_budget, **_figures(ctx, student, eval_data)})
        students.append(student)
        if int8_search is not None and search is not None:
            int8_results[i] = int8_search.quantize_network(student, eval_data)
            block = int8_results[i].block
            entries.append(
                int8_entry(entries[-1], block, index=len(entries), constraints=search.constraints)
            )
            students.append(student)

    chosen, reason, met = choose_candidate(entries, search.constraints if search else None)
    if chosen is None:
        raise JobFailedError(
            "constraints_unmet", f"no student candidate could be trained: {reason}"
        )
    student = students[chosen]
    assert student is not None
    measured, int8_result = chosen, None
    if int8_search is not None:
        # The report's student is the network in fp32 (as the teacher is measured);
        # `int8` beside it says which precision serves.
        found = int8_results[entries[chosen]["candidate"]]
        measured, block = int8_choice(entries, chosen, found.block)
        int8_result = Int8Result(found.data, block)
    # The chosen student's figures were measured once, above; the report reuses them.
    hidden = ("index", "model", "skipped", "candidate", "precision")
    student_figures = {k: v for k, v in entries[measured].items() if k not in hidden}
    reference, why_not = _teacher_on_target(ctx, spec, teacher, target, eval_data)
    report = _comparison(
        ctx, reference, student_figures, eval_data, strategy=spec.strategy, seed=seed
    )
    # Fine-tuned here: adapted before distilling, or a copy adapted for the report. A
    # teacher that already predicted the target's classes was measured as it came.
    report["teacher"]["fine_tuned_on_target"] = (
        spec.strategy == "finetune_then_distill" or reference is not teacher
    )
    if why_not is not None:
        note = report["teacher"].get("accuracy_note")
        text = f"not fine-tuned on the target ({why_not})"
        report["teacher"]["accuracy_note"] = f"{note}; {text}" if note else text
    if search is not None:
        report["candidates"], report["chosen"], precision = report_candidates(entries, chosen)
        if int8_search is not None:
            report["chosen_precision"] = precision
        report["chosen_reason"] = reason
        report["constraints_met"] = met
    if wants_baseline(spec.baseline, student_figures["params"]):
        baseline = train_from_scratch(
            ctx,
            scratch_spec(student),
            spec.finetune,
            data=target,
            eval_data=eval_data,
            seed=seed,
            stage="baseline",
        )
        report["baseline"] = _figures(ctx, baseline, eval_data)
        s_acc, b_acc = report["student"]["accuracy"], report["baseline"]["accuracy"]
        if s_acc is not None and b_acc is not None:
            report["gain_over_baseline"] = round(s_acc - b_acc, 4)
    report["stages"] = ctx.store.stage_seconds()
    return _outcome(
        ctx,
        student,
        eval_data,
        model_id=model_id,
        report=report,
        int8=plan,
        int8_result=int8_result,
    )


# A student this small trains from scratch in a fraction of a teacher's time, so the
# baseline (what distillation bought) runs unless the spec says `baseline: false`.
AUTO_BASELINE_MAX_PARAMS = 5_000_000


def wants_baseline(setting: bool | None, student_params: int) -> bool:
    """`baseline`: true or false as given; unset, on for students of at most
    AUTO_BASELINE_MAX_PARAMS parameters."""
    return _on_unless_too_big(setting, student_params, AUTO_BASELINE_MAX_PARAMS)


def _on_unless_too_big(setting: bool | None, params: int, limit: int) -> bool:
    """An optional extra stage's switch: as the spec gives it, else on up to `limit`."""
    return setting if setting is not None else params <= limit


def scratch_spec(student: Trained) -> ModelSpec:
    """The served student's architecture, from random weights (the baseline)."""
    config = student.config
    return ModelSpec(
        source="scratch", arch=config.arch, width=config.width, input_size=config.input_size
    )


# Fine-tuning a copy of the teacher only for the report costs about one student
# fine-tune per million parameters; past this size it is skipped unless the spec asks.
AUTO_TEACHER_MAX_PARAMS = 30_000_000


def wants_teacher_on_target(setting: bool | None, teacher_params: int) -> bool:
    """`teacher_on_target`: true or false as given; unset, on for teachers of at most
    AUTO_TEACHER_MAX_PARAMS parameters."""
    return _on_unless_too_big(setting, teacher_params, AUTO_TEACHER_MAX_PARAMS)


def _teacher_on_target(
    ctx: JobContext,
    spec: PipelineJobSpec,
    teacher: Trained,
    target: InMemoryData,
    eval_data: InMemoryData,
) -> tuple[Trained, str | None]:
    """The teacher as the report measures it, and why it was not fine-tuned on the target
    (None when it was, or did not need to be). With finetune_then_distill it was
    fine-tuned there already; otherwise a copy is fine-tuned on the target (stage
    "teacher_finetune", the `finetune` settings) for the report: a teacher that predicts
    other classes has no accuracy there to compare."""
    if same_classes(teacher, target):
        return teacher, None
    params = count_params(teacher.net)
    if not wants_teacher_on_target(spec.teacher_on_target, params):
        why = (
            "teacher_on_target is false"
            if spec.teacher_on_target is False
            else f"{params:,} parameters, over the {AUTO_TEACHER_MAX_PARAMS:,} that run it "
            "by default; set teacher_on_target: true"
        )
        return teacher, why
    ctx.reporter.log(
        "fine-tuning a copy of the teacher on the target, to measure it there",
        stage="teacher_finetune",
    )
    return _adapt_teacher(ctx, spec, teacher, target, eval_data), None


def _adapt_teacher(
    ctx: JobContext,
    spec: PipelineJobSpec,
    teacher: Trained,
    target: InMemoryData,
    eval_data: InMemoryData,
) -> Trained:
    """The teacher fine-tuned on the target (stage "teacher_finetune"): the `finetune`
    settings without a kd term, a new head for the target's classes, and a teacher's
    augmentation default (crops on grey images)."""
    return finetune(
        ctx,
        teacher,
        spec.finetune.model_copy(update={"kd_weight": 0.0}),
        data=target,
        eval_data=eval_data,
        teacher=None,
        seed=spec.seed,
        stage="teacher_finetune",
        adapts_teacher=True,
    )


# --------------------------------------------------------------------------- helpers
def _eval_data(ctx: JobContext, spec: AnySpec, target: Any) -> InMemoryData:
    """The evaluation set: the spec's, or the target's test split."""
    evaluate_spec = spec.evaluate or default_evaluate(target)
    return ctx.load_data(evaluate_spec.dataset, seed=spec.seed)


def _figures(ctx: JobContext, trained: Trained, eval_data: InMemoryData | None) -> dict[str, Any]:
    return figures(
        trained,
        eval_data,
        device=ctx.device,
        latency_device=ctx.serving_device,
    )


def _untrained(ctx: JobContext, spec: ModelSpec, data: InMemoryData) -> Trained:
    """A candidate before training: enough for its size and latency budgets."""
    net, config = build_from_spec(ctx, spec, data, data.num_classes, seed=0)
    return Trained(net, config, data.class_names, data.task)


def _comparison(
    ctx: JobContext,
    teacher: Trained,
    student_figures: dict[str, Any],
    eval_data: InMemoryData,
    *,
    strategy: str | None,
    seed: int,
) -> dict[str, Any]:
    """The teacher measured on the evaluation data beside the student's figures."""
    teacher_here = retarget(
        teacher, eval_data, teacher.config.num_classes, seed=seed, device=ctx.device, read_only=True
    )
    return comparison(
        _figures(ctx, teacher_here, eval_data),
        student_figures,
        eval_samples=len(eval_data),
        latency_device=ctx.serving_device,
        strategy=strategy,
    )


def _outcome(
    ctx: JobContext,
    trained: Trained,
    eval_data: InMemoryData,
    *,
    model_id: str,
    report: dict[str, Any] | None = None,
    int8: Int8Plan | None = None,
    int8_result: Int8Result | None = None,
) -> JobOutcome:
    """Evaluate the served network once more, export it (and its int8 form when the spec
    asks: `int8_result` when the size search measured it already), and hand back the
    outcome. A job that asked for int8 reports it, a train or finetune job too."""
    metrics: dict[str, Any] = {"eval_samples": len(eval_data)}
    if same_classes(trained, eval_data):
        metrics.update(evaluate(trained.net, eval_data, device=ctx.device))
    net = copy.deepcopy(trained.net).to("cpu").eval()
    exported = export_model(
        net,
        trained.config,
        model_id=model_id,
        folder=ctx.settings.artifact_dir / "models" / model_id,
        class_names=trained.class_names,
        metrics=metrics,
        job_id=ctx.job_id,
        name=ctx.name,
        task=trained.task,
    )
    compared = report is not None and "teacher" in report
    if int8 is not None:
        block = add_int8(int8, exported, trained, eval_data, int8_result).block
        ctx.reporter.log(int8_text(block), stage="int8", served=block["served"])
        # The contract's place for it (API.md, "Serving additions"): `student.int8`, and
        # `student.serving.precision` says which one is served.
        report = dict(report or {})
        report["student"] = {**report.get("student", {}), "int8": block}
    if report is not None:
        serving = serving_figures(
            exported.meta, ctx.settings.serving_backend, ctx.serving_device.type
        )
        if serving is not None:
            report["student"]["serving"] = serving
        # A train or finetune job has no teacher to compare with: its report is the int8
        # outcome alone.
        report["summary"] = summary(report) if compared else int8_text(report["student"]["int8"])
    return JobOutcome(model=exported, metrics=metrics, report=report)
