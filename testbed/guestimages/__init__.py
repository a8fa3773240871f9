"""Guest disk images made by mkfs, sgdisk, lvm and the kernel: their model, builder and tools."""
