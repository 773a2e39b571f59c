"""What a sweep scores: a `Task` names the training loss and the metrics computed on the test
split (classification accuracy, language-model perplexity and bits per byte, regression MSE),
which metric leads the tables, and which data a built-in task name brings.

    >>> from mpq.sweep.tasks import resolve_task
    >>> t = resolve_task("lm")
    >>> t.metric, t.higher_is_better, t.data
    ('perplexity', False, 'stdlib_bytes')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, SupportsFloat

import torch

from mpq._errors import describe as _describe

__all__ = ["TASKS", "Task", "TaskSpec", "resolve_task", "task_for_data"]


# Module-level functions (not lambdas), so tasks pickle into process pools and Ray workers.
def _ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(outputs.float().reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs.float().reshape(targets.shape) - targets.float()) ** 2).mean()


def _classification_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {
        "accuracy": float((outputs.argmax(-1) == targets).float().mean()),
        "loss": float(_ce(outputs, targets)),
    }


def _lm_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean next-byte cross-entropy (nats) -> perplexity `exp(ce)` and bits per byte `ce / ln 2`
    (a byte-level vocabulary: one token is one byte)."""
    ce = float(_ce(outputs, targets))
    return {
        "perplexity": math.exp(ce),
        "bits_per_byte": ce / math.log(2.0),
        "accuracy": float((outputs.argmax(-1) == targets).float().mean()),
        "loss": ce,
    }


def _regression_metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    mse = float(_mse(outputs, targets))
    return {"mse": mse, "loss": mse}


@dataclass(frozen=True)
class Task:
    """How a model is trained and scored.

    Args:
        name: the task's name in records and `--task`.
        metric: the key of `score`'s result that leads tables and plots.
        higher_is_better: the metric's direction (accuracy: True; perplexity, MSE: False).
        loss: `loss(outputs, targets) -> scalar tensor` used to train and fine-tune.
        score: `score(outputs, targets) -> {name: float}` on the whole test split (float32
            outputs, concatenated over batches); must contain `metric`.
        data: the built-in data a task name brings (None: the model spec names it).
        description: one line for `mpq sweep --help`.

    Example:
        >>> def top2(outputs, targets):
        ...     return {"top2": float((outputs.topk(2, -1).indices == targets[:, None]).any(-1).float().mean())}
        >>> t = Task("top2", "top2", True, resolve_task("classification").loss, top2)
    """

    name: str
    metric: str
    higher_is_better: bool
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    score: Callable[[torch.Tensor, torch.Tensor], Mapping[str, SupportsFloat] | SupportsFloat]
    data: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(
                f"Expected a non-empty task name. Received: name={_describe(self.name)}"
            )
        if not isinstance(self.metric, str) or not self.metric:
            raise TypeError(
                f"Expected the metric's name as a string. Received: metric={_describe(self.metric)}"
            )
        for key in ("loss", "score"):
            if not callable(getattr(self, key)):
                raise TypeError(
                    f"Expected `{key}` to be callable. Received: {key}={_describe(getattr(self, key))}"
                )

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """`score(outputs, targets)`, checked: a dict holding `metric`, every value a finite
        number (a NaN metric is an error, not a number in a table)."""
        scored = self.score(outputs, targets)
        values = scored if isinstance(scored, Mapping) else {self.metric: scored}
        if self.metric not in values:
            raise ValueError(
                f"Expected task {self.name!r} to score a {self.metric!r} value. "
                f"Received: keys {sorted(values)}"
            )
        out: dict[str, float] = {}
        for key, val in values.items():
            try:
                num = float(val)
            except (TypeError, ValueError):
                raise TypeError(
                    f"Expected metric {key!r} of task {self.name!r} to be a number. "
                    f"Received: {_describe(val)}"
                ) from None
            if not math.isfinite(num):
                raise FloatingPointError(
                    f"Expected metric {key!r} of task {self.name!r} to be finite. Received: {num}"
                )
            out[key] = num
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "higher_is_better": self.higher_is_better}


#: What names a task: a built-in name, a `Task`, a `metric(outputs, targets)` callable, or
#: None (the task the data brings, else classification).
TaskSpec = str | Task | Callable[[torch.Tensor, torch.Tensor], SupportsFloat] | None


class _UserMetric:
    """A user's `metric(outputs, targets) -> float` as a task's score (picklable when the
    function is a module-level one)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], SupportsFloat], name: str):
        self.fn, self.name = fn, name

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, SupportsFloat]:
        return {self.name: self.fn(outputs, targets)}


def _classification(name: str, description: str, data: str | None = None) -> Task:
    """A classification task: cross-entropy, scored by accuracy."""
    return Task(name, "accuracy", True, _ce, _classification_metrics, data, description)


#: Built-in tasks by name: the scoring and, for data tasks, the data they bring.
TASKS: dict[str, Task] = {
    "classification": _classification("classification", "accuracy on the model spec's own data"),
    "digits": _classification("digits", "8x8 digits images, accuracy", "digits"),
    "digits_flat": _classification("digits_flat", "digits as 64 features, accuracy", "digits_flat"),
    "synthetic": _classification(
        "synthetic", "synthetic 512-feature classes, accuracy", "synthetic"
    ),
    "lm": Task(
        "lm",
        "perplexity",
        False,
        _ce,
        _lm_metrics,
        data="stdlib_bytes",
        description="next-byte language model on Python stdlib sources, perplexity and bits/byte",
    ),
    "regression": Task(
        "regression",
        "mse",
        False,
        _mse,
        _regression_metrics,
        data="synthetic_regression",
        description="synthetic tanh(x @ w) + noise targets, mean squared error",
    ),
}


def task_for_data(data: object) -> Task:
    """The built-in task whose data is `data` (a built-in data name); classification otherwise."""
    if isinstance(data, str):
        for task in TASKS.values():
            if task.data == data:
                return task
    return TASKS["classification"]


def resolve_task(spec: TaskSpec, data: object = None) -> Task:
    """A `Task` from a built-in name (`"lm"`, `"digits"`, `"regression"`, ...), a Task, a
    `metric(outputs, targets) -> float` callable (higher is better unless the function has
    `higher_is_better = False`; trained with cross-entropy), or None (from `data`)."""
    if spec is None:
        return task_for_data(data)
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, str):
        if spec in TASKS:
            return TASKS[spec]
        raise ValueError(f"Expected a task name from {sorted(TASKS)}. Received: task={spec!r}")
    if callable(spec):
        name = getattr(spec, "__name__", type(spec).__name__)
        return Task(
            name,
            name,
            bool(getattr(spec, "higher_is_better", True)),
            _ce,
            _UserMetric(spec, name),
        )
    raise TypeError(
        "Expected a task name, an mpq.sweep.tasks.Task, or a metric(outputs, targets) callable. "
        f"Received: task={_describe(spec)}"
    )
