"""The planner: recipe × target × checkpoint → a frozen, typed `ExportPlan` with structured decisions."""

from .plan import Decision, ExportPlan, HeadPlan, MixedPlan, TableMode, TablePlan, VisionPlan
from .rules import BLOCK_SIZES, HEAD_BLOCK, plan

__all__ = ["BLOCK_SIZES", "HEAD_BLOCK", "Decision", "ExportPlan", "HeadPlan", "TablePlan", "plan"]
