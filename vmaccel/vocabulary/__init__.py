"""The words every layer of vmaccel shares; imports nothing of ours.

``errors``     the one error tree, its exit codes, errno values and HTTP statuses
``backupref``  backup references: an id, a uuid, ``VM@latest``, ``VM@<ISO time>``, ``VM@-N``
``disknames``  the names of a VM's disks: key, ``disk-KEY``, label, controller unit
``units``      one way to print bytes, durations and UTC times
"""
