"""vmaccel: accelerator backups for VMware vSphere.

Layers, each importing only those below it (docs/architecture.md):
``vmaccel.cli`` (the application: composition root, no logic) -> ``vmaccel.service`` (use cases)
-> ``vmaccel.plugin`` | ``vmaccel.fusemount`` -> ``vmaccel.catalog`` | ``vmaccel.guestfs`` ->
``vmaccel.vocabulary``.
"""
