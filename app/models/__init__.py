"""ORM models, one module per table; imported by both the API and the worker."""

from app.models.api_key import ApiKey
from app.models.base import Base
from app.models.checkpoint import Checkpoint
from app.models.dataset import Dataset
from app.models.job import FINISHED_STATES, Job, JobState
from app.models.job_event import JobEvent
from app.models.job_input import JobInput
from app.models.trained_model import TrainedModel
from app.models.worker import WorkerRecord

__all__ = [
    "FINISHED_STATES",
    "ApiKey",
    "Base",
    "Checkpoint",
    "Dataset",
    "Job",
    "JobEvent",
    "JobInput",
    "JobState",
    "TrainedModel",
    "WorkerRecord",
]
