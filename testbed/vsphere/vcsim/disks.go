package main

// Control API operations that change a VM's disks: put a raw image behind a disk, add a disk,
// grow a disk, and set the power state. Adding a disk and changing power go through vcsim's own
// methods (in-process client) so its bookkeeping (keys, unit numbers, layout) stays right.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// fillDisk makes image the content of disk: capacity = image size, a fresh descriptor, and (if
// tracking) the whole disk recorded as written. Caller holds bed.mu and the VM's lock.
func (b *bed) fillDisk(vm *simulator.VirtualMachine, disk *types.VirtualDisk, image string) error {
	st, err := os.Stat(image)
	if err != nil {
		return err
	}
	if st.Size() == 0 || st.Size()%512 != 0 {
		return fmt.Errorf("image %s: size %d is not a positive multiple of 512", image, st.Size())
	}
	backing, err := flatBacking(disk)
	if err != nil {
		return err
	}
	ensureDiskUUID(backing)
	descriptor, err := localPath(backing.FileName)
	if err != nil {
		return err
	}
	if err = sparseCopy(flatName(descriptor), image, st.Size()); err != nil {
		return err
	}
	if err = writeDescriptor(descriptor, path.Base(flatName(descriptor)), st.Size(), ddbUUID(backing.Uuid)); err != nil {
		return err
	}
	setCapacity(disk, st.Size())
	b.recordWrite(vm, disk.Key, extent{0, st.Size()})
	return nil
}

func (b *bed) attachDisk(_ *http.Request, req controlRequest) (interface{}, error) {
	return b.withDisk(req.VM, req.Disk, func(vm *simulator.VirtualMachine, disk *types.VirtualDisk) error {
		return b.fillDisk(vm, disk, req.Image)
	})
}

// growDisk extends a disk; the new area reads as zeros (a hole), as on a thin VMFS disk.
func (b *bed) growDisk(_ *http.Request, req controlRequest) (interface{}, error) {
	return b.withDisk(req.VM, req.Disk, func(vm *simulator.VirtualMachine, disk *types.VirtualDisk) error {
		if req.Capacity < capacityOf(disk) || req.Capacity%512 != 0 {
			return fmt.Errorf("capacity %d: disks only grow, in multiples of 512 (now %d)",
				req.Capacity, capacityOf(disk))
		}
		backing, err := flatBacking(disk)
		if err != nil {
			return err
		}
		ensureDiskUUID(backing)
		descriptor, err := localPath(backing.FileName)
		if err != nil {
			return err
		}
		if err = unshare(flatName(descriptor)); err != nil {
			return err
		}
		if err = os.Truncate(flatName(descriptor), req.Capacity); err != nil {
			return err
		}
		setCapacity(disk, req.Capacity)
		return writeDescriptor(descriptor, path.Base(flatName(descriptor)), req.Capacity, ddbUUID(backing.Uuid))
	})
}

// addDisk creates a new disk next to the VM's first disk, filled from image or empty.
func (b *bed) addDisk(r *http.Request, req controlRequest) (interface{}, error) {
	vm, err := findVM(req.VM)
	if err != nil {
		return nil, err
	}
	capacity := req.Capacity
	if req.Image != "" {
		st, err := os.Stat(req.Image)
		if err != nil {
			return nil, err
		}
		capacity = st.Size()
	}
	if capacity <= 0 || capacity%1024 != 0 {
		return nil, fmt.Errorf("capacity %d is not a positive multiple of 1024", capacity)
	}
	fileName, err := b.createDisk(r.Context(), vm, capacity)
	if err != nil {
		return nil, err
	}
	key, err := diskKeyByFile(vm, fileName)
	if err != nil {
		return nil, err
	}
	return b.withDisk(req.VM, key, func(vm *simulator.VirtualMachine, disk *types.VirtualDisk) error {
		if req.Image != "" {
			return b.fillDisk(vm, disk, req.Image)
		}
		return nil
	})
}

// createDisk adds a disk through vcsim's ReconfigVM_Task and sizes its flat file.
func (b *bed) createDisk(ctx context.Context, vm *simulator.VirtualMachine, capacity int64) (string, error) {
	obj := object.NewVirtualMachine(b.client, vm.Self)
	devices, err := obj.Device(ctx)
	if err != nil {
		return "", err
	}
	controller, err := devices.FindDiskController("")
	if err != nil {
		return "", err
	}
	first, err := findDisk(vm, 0)
	if err != nil {
		return "", err
	}
	firstBacking, err := flatBacking(first)
	if err != nil {
		return "", err
	}
	fileName := ""
	for i := 2; fileName == ""; i++ {
		candidate := siblingPath(firstBacking.FileName, fmt.Sprintf("disk%d.vmdk", i))
		if p, err := localPath(candidate); err == nil {
			if _, err = os.Stat(p); os.IsNotExist(err) {
				fileName = candidate
			}
		}
	}
	disk := devices.CreateDisk(controller, *firstBacking.Datastore, fileName)
	disk.CapacityInKB = capacity / 1024
	if err = obj.AddDevice(ctx, disk); err != nil {
		return "", err
	}
	flat, err := localFlat(fileName)
	if err != nil {
		return "", err
	}
	return fileName, os.Truncate(flat, capacity)
}

func diskKeyByFile(vm *simulator.VirtualMachine, fileName string) (int32, error) {
	var key int32
	simulator.Map.WithLock(vm, func() {
		for _, disk := range disksOf(vm.Config.Hardware.Device) {
			if b, err := flatBacking(disk); err == nil && b.FileName == fileName {
				key = disk.Key
			}
		}
	})
	if key == 0 {
		return 0, fmt.Errorf("disk %s was not added", fileName)
	}
	return key, nil
}

func (b *bed) setPower(r *http.Request, req controlRequest) (interface{}, error) {
	vm, err := findVM(req.VM)
	if err != nil {
		return nil, err
	}
	var current types.VirtualMachinePowerState
	simulator.Map.WithLock(vm, func() { current = vm.Runtime.PowerState })
	if string(current) == req.State {
		return struct{}{}, nil
	}
	obj := object.NewVirtualMachine(b.client, vm.Self)
	var task *object.Task
	switch types.VirtualMachinePowerState(req.State) {
	case types.VirtualMachinePowerStatePoweredOn:
		task, err = obj.PowerOn(r.Context())
	case types.VirtualMachinePowerStatePoweredOff:
		task, err = obj.PowerOff(r.Context())
	case types.VirtualMachinePowerStateSuspended:
		task, err = obj.Suspend(r.Context())
	default:
		return nil, fmt.Errorf("unknown power state %q (poweredOn, poweredOff, suspended)", req.State)
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, task.Wait(r.Context())
}
