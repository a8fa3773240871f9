"""fusemount: how users get data back from a vmaccel repository.

Every backup is shown as a file system (``vmaccel mount``; read-only, or with a copy-on-write
overlay for image files), and can be restored without mounting (``vmaccel restore disk`` and
``vmaccel restore file``). The package is split three ways, after borg's
``vfs.py``:

``tree``       the pure virtual tree: ``/<vm>/<backup time>/<disk>.vmdk`` and friends, from plain
               data (a :class:`~vmaccel.fusemount.source.CatalogView`); unit-tested without FUSE
``adapter``    the thin FUSE operations over the tree (paths in, attributes and bytes out)
``binding``    the only module that imports the FUSE binding (mfusepy, else fusepy), lazily

Around them: ``source`` (the narrow protocol to the repository) and ``repoview`` (its catalog
implementation), ``vmdk`` (descriptor text), ``openfiles`` (open handles, one image reader per
open image), ``errors`` (the one ``to_errno()``), ``mount`` (mount/umount lifecycle),
``backupref`` (``ID`` / ``VM@latest`` / ``VM@<time>`` resolution), ``restore`` (disk restore),
``filerestore`` (guest files into a directory, never outside it) and ``overlay`` (the
copy-on-write overlays of ``mount --writable``).

Imports: ``catalog`` and ``guestfs`` only; never ``plugin``. Importing this package does not
load libfuse; only :func:`vmaccel.fusemount.binding.load_binding` does.
"""
