"""The backup job: per-disk read plans (pure), copying through a transport, per-VM runs."""
