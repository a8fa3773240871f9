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
``policies``     policies: add, edit, list, remove, history, apply a file, test, run now
                 (``policyspec`` the record, ``schedule`` cron and windows, ``policyrun``
                 one run's vCenter session, ``policyplan`` per-disk predictions,
                 ``coverage`` unprotected VMs)
``jobs``         job history: list, show, log, cancel (``jobbook`` writes the rows)
``tokens``       API tokens of the REST API: create (shown once), list, revoke, check
``restorepoints`` VMs and their backups, filtered and paged (for the API and the console)
``guestfiles``   a backup's guest files without mounting: list a directory, read a file

Reports are the packages' own frozen report classes where one exists (``to_dict`` is the
documented JSON of docs/json.md, ``summary`` the human lines), else defined here.
"""
