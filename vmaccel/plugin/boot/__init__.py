"""Boot tests: disk images booted under qemu, the boot judged from the serial console.

``machine``  the machine's shape from the saved VM configuration, and qemu's command line (pure)
``console``  what the serial console and the firmware's debug port say: marker, no bootable
             disk, kernel panic (pure), and the tail of a growing log file
``qmp``      a minimal client of qemu's machine protocol (status, screendump, quit)
``runner``   one boot: start qemu, watch, take the screenshot, stop it; KVM or TCG

The images come from the caller (the service layer mounts a restore point); this package
neither mounts nor records anything.
"""
