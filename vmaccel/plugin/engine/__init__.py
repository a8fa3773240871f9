"""The backup engine: per-disk read plans (pure), copying through a transport, per-VM runs.

(A *job* is one run of a policy, which the daemon schedules; a job runs this engine.)
"""
