"""The Evaluator protocol (detectron2's reset/process/evaluate) and shared helpers.

An evaluator holds (or loads) its own ground truth and consumes one prediction per image:

- ``CocoEvaluator`` and ``ProposalEvaluator``: ``process(image_id, Detections)``;
- ``PointEvaluator``: ``process(image_id, ClickTrace | list[ClickTrace])``;
- the BSDS edge evaluator: ``process(image_id, EdgeMap)``.

``evaluate()`` returns a flat ``dict[str, float]`` whose keys carry the evaluator's prefix,
e.g. ``"segm/AP"``, ``"bbox/AP50"``, ``"proposals/AR@1000"``, ``"points/mIoU@1"``.

An evaluator may also have ``discard(image_id)`` (all four above do): the runner calls it on
the evaluators that already processed an image that then failed in another one, so a failed
image counts in no metric. One without it keeps such an image; the runner logs a warning and
names it under ``kept_by`` in the failure record.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Hashable
from typing import Any, Protocol, TypeVar, runtime_checkable

logger = logging.getLogger(__name__)

T = TypeVar("T")


@runtime_checkable
class Evaluator(Protocol):
    """Accumulates predictions image by image, then computes metrics once.

    An optional ``discard(image_id)`` (not part of the protocol's required methods) forgets one
    processed image; see the module docstring.
    """

    def reset(self) -> None:
        """Forget everything processed so far."""
        ...

    def process(self, image_id: Hashable, prediction: Any) -> None:
        """Record the prediction for one image (type depends on the evaluator)."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Metrics over all processed images, as flat ``"prefix/name"`` keys."""
        ...


def quiet_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` with its stdout captured and sent to the debug log.

    pycocotools prints progress ("loading annotations into memory", the summarize table);
    library code must not print, so the text goes to ``logging`` instead.
    """
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args, **kwargs)
    text = buf.getvalue().strip()
    if text:
        logger.debug("%s: %s", getattr(fn, "__qualname__", fn), text)
    return out


def threshold_name(thr: float) -> str:
    """0.85 -> ``"85"``, 0.9 -> ``"90"``, 0.875 -> ``"87.5"`` (for metric keys)."""
    pct = round(float(thr) * 100, 6)
    return f"{pct:g}"


class ItemGroundTruth:
    """Adapter for evaluators whose ``process`` takes the ground truth as a third argument.

    The runner calls ``process_item(item, prediction)`` on evaluators that have it; this
    adapter forwards ``evaluator.process(item.image_id, prediction, ground_truth(item))``,
    and can add a key prefix to metrics that have none. Example (BSDS edges)::

        ev = ItemGroundTruth(BoundaryEvaluator(), lambda s: s.boundaries, prefix="edges")
        run(edge_task, bsds_test, ev)  # metrics "edges/ODS", "edges/OIS", ...

    Args:
        evaluator: any object with ``reset()``, ``process(image_id, prediction, gt)`` and
            ``evaluate() -> dict[str, float]``.
        ground_truth: maps a dataset item to the ground truth that ``process`` expects.
        prefix: prepended as ``"<prefix>/"`` to metric keys that contain no ``/``.
    """

    def __init__(
        self, evaluator: Any, ground_truth: Callable[[Any], Any], prefix: str | None = None
    ) -> None:
        for name in ("reset", "process", "evaluate"):
            if not callable(getattr(evaluator, name, None)):
                raise TypeError(f"{type(evaluator).__name__} has no {name}() method")
        if not callable(ground_truth):
            raise TypeError("ground_truth must be a callable item -> ground truth")
        self.evaluator = evaluator
        self.ground_truth = ground_truth
        self.prefix = prefix

    def reset(self) -> None:
        self.evaluator.reset()

    def process(self, image_id: Hashable, prediction: Any) -> None:
        raise TypeError(
            f"{type(self.evaluator).__name__} needs the ground truth; call process_item(item, prediction)"
        )

    def process_item(self, item: Any, prediction: Any) -> None:
        """Forward one image with the ground truth taken from the dataset item."""
        self.evaluator.process(item.image_id, prediction, self.ground_truth(item))

    def discard(self, image_id: Hashable) -> None:
        """Forward to the wrapped evaluator's ``discard``.

        Raises:
            NotImplementedError: the wrapped evaluator has no ``discard``.
        """
        discard = getattr(self.evaluator, "discard", None)
        if not callable(discard):
            raise NotImplementedError(f"{type(self.evaluator).__name__} has no discard()")
        discard(image_id)

    def evaluate(self) -> dict[str, float]:
        out = self.evaluator.evaluate()
        if not self.prefix:
            return dict(out)
        return {(k if "/" in k else f"{self.prefix}/{k}"): v for k, v in out.items()}
