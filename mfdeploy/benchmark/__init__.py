"""`mfdeploy bench` and `mfdeploy report`: latency measured through the runner interface, one result file
per device, and reports that merge them.

The timing loop itself is :mod:`mfdeploy.runtime.timing` (calibration times with it too). Modules, bottom
up: ``stats`` (percentiles, spread warnings), ``memory`` (peak RSS, GPU memory), ``stages`` (per-layer
profiles mapped to model stages), ``noop`` (a runner that does nothing, to measure the harness itself),
``cell`` (one target at one batch, in this process), ``worker`` (a cell in a fresh child process),
``bench`` (every target and batch -> one result), ``schema`` (the result format), ``plots`` and
``report`` (merged tables and charts). ``latency`` only re-exports ``TimingPlan`` for the CLI.
"""
