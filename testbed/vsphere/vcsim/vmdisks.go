package main

// The disks of VMs created or reconfigured through the API (see vmlife.go): created disks get a
// sparse flat file of their capacity, attached disks are measured from their files, edited
// disks that grew get their flat file extended.

import (
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// realiseDisks gives the VM's disks that are not in before (the disks the spec added, in spec
// order) real files: created ones a sparse flat file of their capacity, attached ones the
// capacity and uuid of the file they name. Caller holds bed.mu.
func (b *bed) realiseDisks(vm *simulator.VirtualMachine, before map[int32]bool, added []diskAdd) error {
	var err error
	simulator.Map.WithLock(vm, func() {
		i := 0
		for _, disk := range disksOf(vm.Config.Hardware.Device) {
			if before[disk.Key] || i >= len(added) {
				continue
			}
			op := added[i].fileOperation
			i++
			if op == "" {
				err = adoptDisk(disk)
			} else {
				err = makeDisk(disk)
			}
			if err != nil {
				return
			}
		}
	})
	b.pruneTrackers(vm)
	return err
}

// makeDisk gives a disk vcsim created (empty files) a sparse flat file of its capacity and a
// descriptor.
func makeDisk(disk *types.VirtualDisk) error {
	backing, err := flatBacking(disk)
	if err != nil {
		return err
	}
	capacity := capacityOf(disk)
	if capacity <= 0 || capacity%512 != 0 {
		return fmt.Errorf("disk %d: capacity %d is not a positive multiple of 512", disk.Key, capacity)
	}
	ensureDiskUUID(backing)
	descriptor, err := localPath(backing.FileName)
	if err != nil {
		return err
	}
	flat := flatName(descriptor)
	_ = os.Remove(flat) // a new inode: nothing else may share the old one
	f, err := os.OpenFile(flat, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err = f.Truncate(capacity); err != nil {
		f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	setCapacity(disk, capacity)
	return writeDescriptor(descriptor, path.Base(flat), capacity, ddbUUID(backing.Uuid))
}

// extendEdited grows the flat file of every disk the spec edited whose capacity is now larger
// than the file (a disk extended through ReconfigVM_Task; the new area is a hole).
func extendEdited(vm *simulator.VirtualMachine, changes []types.BaseVirtualDeviceConfigSpec) error {
	var err error
	simulator.Map.WithLock(vm, func() {
		for _, c := range changes {
			spec := c.GetVirtualDeviceConfigSpec()
			edited, ok := spec.Device.(*types.VirtualDisk)
			if !ok || spec.Operation != types.VirtualDeviceConfigSpecOperationEdit || err != nil {
				continue
			}
			var disk *types.VirtualDisk
			if disk, err = findDisk(vm, edited.Key); err == nil {
				err = extendFlat(disk)
			}
		}
	})
	return err
}

func extendFlat(disk *types.VirtualDisk) error {
	backing, err := flatBacking(disk)
	if err != nil {
		return nil // not simulated
	}
	descriptor, err := localPath(backing.FileName)
	if err != nil {
		return err
	}
	capacity := capacityOf(disk)
	st, err := os.Stat(flatName(descriptor))
	if err != nil || st.Size() >= capacity {
		return err
	}
	if err = unshare(flatName(descriptor)); err != nil {
		return err
	}
	if err = os.Truncate(flatName(descriptor), capacity); err != nil {
		return err
	}
	ensureDiskUUID(backing)
	setCapacity(disk, capacity)
	return writeDescriptor(descriptor, path.Base(flatName(descriptor)), capacity, ddbUUID(backing.Uuid))
}

// adoptDisk takes an attached disk's capacity and uuid from its files: the descriptor's extent
// line and ddb.uuid, else the flat file's size. A missing descriptor is written.
func adoptDisk(disk *types.VirtualDisk) error {
	backing, err := flatBacking(disk)
	if err != nil {
		return err
	}
	descriptor, err := localPath(backing.FileName)
	if err != nil {
		return err
	}
	st, err := os.Stat(flatName(descriptor))
	if err != nil {
		return fmt.Errorf("disk %d: %v", disk.Key, err)
	}
	capacity, uuid := st.Size(), ""
	if text, err := os.ReadFile(descriptor); err == nil {
		if sectors, u, ok := parseDescriptor(string(text)); ok {
			capacity, uuid = sectors*512, u
		}
	}
	if backing.Uuid == "" && uuid != "" {
		backing.Uuid = backingUUID(uuid)
	}
	ensureDiskUUID(backing)
	setCapacity(disk, capacity)
	if info, err := os.Stat(descriptor); err != nil || info.Size() == 0 {
		return writeDescriptor(descriptor, path.Base(flatName(descriptor)), capacity, ddbUUID(backing.Uuid))
	}
	return nil
}

// parseDescriptor reads a vmdk descriptor's first extent size (sectors) and ddb.uuid.
func parseDescriptor(text string) (sectors int64, uuid string, ok bool) {
	for _, line := range strings.Split(text, "\n") {
		fields := strings.Fields(strings.TrimSpace(line))
		switch {
		case len(fields) >= 3 && (fields[0] == "RW" || fields[0] == "RDONLY") && !ok:
			n, err := strconv.ParseInt(fields[1], 10, 64)
			if err == nil && n > 0 {
				sectors, ok = n, true
			}
		case len(fields) >= 3 && fields[0] == "ddb.uuid":
			uuid = strings.Trim(strings.TrimSpace(strings.SplitN(line, "=", 2)[1]), `"`)
		}
	}
	return sectors, uuid, ok
}

// backingUUID turns a descriptor's ddb.uuid ("60 00 c2 9a ...-...") into backing notation.
func backingUUID(ddb string) string {
	h := strings.NewReplacer(" ", "", "-", "").Replace(ddb)
	if len(h) != 32 {
		return ""
	}
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// pruneTrackers drops the trackers of disks the VM no longer has. Caller holds bed.mu.
func (b *bed) pruneTrackers(vm *simulator.VirtualMachine) {
	keys := map[int32]bool{}
	simulator.Map.WithLock(vm, func() {
		for _, d := range disksOf(vm.Config.Hardware.Device) {
			keys[d.Key] = true
		}
	})
	for id := range b.trackers {
		if id.vm == vm.Self.Value && !keys[id.key] {
			delete(b.trackers, id)
		}
	}
}
