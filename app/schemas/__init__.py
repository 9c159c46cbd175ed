"""Pydantic schemas: the job spec (shared with the worker) and the API's bodies."""
