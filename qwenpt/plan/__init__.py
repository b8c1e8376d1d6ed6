"""The layout planner: ``python -m qwenpt.plan model=... parallel=... --gpus N``."""

from qwenpt.plan.planner import Gpu, Plan, make_plan, render

__all__ = ["Gpu", "Plan", "make_plan", "render"]
