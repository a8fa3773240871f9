"""Disk writers (``DiskSink``): the mirror of the read transports, used by restores into
vSphere. A sink writes byte ranges of one virtual disk; the copy writes only an image's data
extents (holes stay holes on a fresh thin disk) or, into an existing disk, zeroes what must
read as zeros."""
