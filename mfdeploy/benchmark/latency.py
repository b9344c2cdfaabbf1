"""Moved: the timing loop is :mod:`mfdeploy.runtime.timing` (calibration times with it too).

Only ``mfdeploy/cli.py`` still imports ``TimingPlan`` from here; drop this module once it imports
:mod:`mfdeploy.runtime.timing`.
"""

from mfdeploy.runtime.timing import TimingPlan

__all__ = ["TimingPlan"]
