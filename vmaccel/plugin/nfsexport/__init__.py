"""The NFS export of instant recovery: a user-space NFS v3 server (nfs-ganesha) that we run.

One server per state directory serves every instant session's export; :mod:`.server` owns
its configuration file, pid file and lifecycle. Nothing here knows about FUSE or vSphere: an
export is a local directory (the VM's directory of a writable mount) and the one client
address (the ESXi host) allowed to mount it.
"""

from vmaccel.plugin.nfsexport.server import Export, ExportError, ExportServer, ExportSettings

__all__ = ["Export", "ExportError", "ExportServer", "ExportSettings"]
