"""/api/v1/jobs/{id}/plots/{name}.{png|svg}: learning curves and the size-search front."""

from __future__ import annotations

import threading
from typing import Literal

from fastapi import APIRouter, Response

from app.api.deps import OwnerDep, SessionDep
from app.api.errors import ProblemError
from app.services import examples, plots
from app.services import jobs as jobs_service

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
# pyplot keeps global state; one figure is drawn at a time.
_PLOT_LOCK = threading.Lock()


@router.get(
    "/{job_id:id}/plots/{name}.{fmt}",
    summary="A plot of the job: learning_curves or pareto, as png or svg",
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {"example": examples.PLOT_SVG}}},
        404: {
            "description": "No such job, or nothing to plot yet",
            "content": {"application/problem+json": {}},
        },
    },
    response_class=Response,
    description="Draws a plot of the job as a PNG or SVG image. `learning_curves`: per stage "
    "and epoch, train and evaluation loss above and accuracy below (a distill stage plots "
    "agreement with the teacher), for any job that has finished an epoch. `pareto`: a size "
    "search's candidates, accuracy against parameters. 404 when there is nothing to plot "
    "yet (no epoch, or no size-search report), or no such job.",
)
def job_plot(
    job_id: str,
    name: Literal["learning_curves", "pareto"],
    fmt: Literal["png", "svg"],
    owner: OwnerDep,
    session: SessionDep,
) -> Response:
    # A plain `def`: FastAPI runs it in its thread pool, so neither the queries nor the
    # drawing (tens of milliseconds) hold up the event loop.
    job = jobs_service.get_owned(session, owner, job_id)
    title = f"{job.name or job.kind} ({job.id[:8]})"
    if name == "learning_curves":
        history = jobs_service.metric_history(session, owner=owner, job_id=job_id)
        body = _locked(plots.learning_curves, history, title, fmt)
        missing = "the job has no training epochs yet"
    else:
        report = dict(job.report or {})
        report["constraints"] = ((job.spec.get("student") or {}).get("constraints")) or {}
        body = _locked(plots.pareto, report, title, fmt)
        missing = "the job has no size-search report (student.candidates) yet"
    if body is None:
        raise ProblemError(404, missing, type_="not-found")
    return Response(body, media_type=MEDIA_TYPES[fmt])


def _locked(fn, data, title: str, fmt: str):
    with _PLOT_LOCK:
        return fn(data, title=title, fmt=fmt)
