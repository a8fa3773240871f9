"""vmaccel's vCenter-facing side: sessions, inventory, snapshots, CBT, transports, the backup
job and the ``vmaccel`` command line (the composition root). Only ``vmaccel.plugin.vcenter`` imports
the vSphere SDKs; everything else sees frozen dataclasses."""
