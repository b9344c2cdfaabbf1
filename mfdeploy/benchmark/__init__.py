"""`mfdeploy bench` and `mfdeploy report`: latency measured through the runner interface, one result file
per device, and reports that merge them.

Modules, bottom up: ``stats`` (percentiles, spread warnings), ``latency`` (the timing loop), ``memory``
(peak RSS, GPU memory), ``stages`` (per-layer profiles mapped to model stages), ``noop`` (a runner that
does nothing, to measure the harness itself), ``cell`` (one target at one batch, in this process),
``worker`` (a cell in a fresh child process), ``bench`` (every target and batch -> one result),
``schema`` (the result format), ``plots`` and ``report`` (merged tables and charts).
"""
