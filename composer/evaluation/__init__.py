"""Evaluation: the Evaluator protocol, COCO AP, proposal AR, point/NoC metrics and the runner.

The BSDS edge evaluator lives in ``composer.evaluation.edges_bsds``.
"""

from .base import Evaluator, ItemGroundTruth
from .coco_ap import CocoEvaluator
from .points import ClickTrace, PointEvaluator, mask_iou, next_click, simulate_clicks
from .proposals import ProposalEvaluator
from .runner import EvaluationInterrupted, plot_click_curves, point_targets, run

__all__ = [
    "ClickTrace",
    "CocoEvaluator",
    "EvaluationInterrupted",
    "Evaluator",
    "ItemGroundTruth",
    "PointEvaluator",
    "ProposalEvaluator",
    "mask_iou",
    "next_click",
    "plot_click_curves",
    "point_targets",
    "run",
    "simulate_clicks",
]
