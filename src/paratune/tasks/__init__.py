"""Evaluation tasks: readers for the shared data sets, metrics, and model scoring (see ``scoring``)."""

from .base import Example, Task
from .registry import TASKS, get_task

__all__ = ["Example", "Task", "TASKS", "get_task"]
