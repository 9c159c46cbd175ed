"""Stillhouse: a REST service that distills big models into small, task-ready ones."""

__version__ = "0.1.0"
