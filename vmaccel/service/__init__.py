"""The use cases of vmaccel: typed requests in, typed reports out.

The one place that spans packages; the CLI (and later the REST API, the console and the
daemon) call these and hold no logic of their own. Each module is one group of use cases:

``context``      what every use case needs (repository, passphrase, config directory) and
                 the one place a repository is opened
``backups``      list and show restore points; resolve a backup reference and a disk name
``runs``         take backups (from vCenter, or one disk without vCenter)
``vcenters``     add, list and test vCenter connections
``repository``   create a repository, its statistics, rebuild its index
``maintenance``  verify, prune, gc
``restores``     a disk to a file or device, guest files to a directory
``browse``       search the file catalog; mount and unmount

Reports are the packages' own frozen report classes where one exists (``to_dict`` is the
documented JSON of docs/json.md, ``summary`` the human lines), else defined here.
"""
