package main

// Lookups into vcsim's inventory: VMs by name or moref, their virtual disks, and datastore
// paths ("[LocalDS_0] vm/disk1.vmdk") mapped to files on the local disk. Callers that read or
// change a VM's devices hold simulator.Map.WithLock(vm) as vcsim's own methods do.

import (
	"crypto/rand"
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// notFoundError makes the control API answer 404 instead of 400.
type notFoundError struct{ what string }

func (e notFoundError) Error() string { return e.what + " not found" }

// findVM accepts a moref value ("vm-57") or an inventory name ("DC0_H0_VM0").
func findVM(id string) (*simulator.VirtualMachine, error) {
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: id}
	if vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine); ok {
		return vm, nil
	}
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm := e.(*simulator.VirtualMachine); vm.Name == id {
			return vm, nil
		}
	}
	return nil, notFoundError{fmt.Sprintf("virtual machine %q", id)}
}

func disksOf(devices []types.BaseVirtualDevice) []*types.VirtualDisk {
	var out []*types.VirtualDisk
	for _, d := range devices {
		if disk, ok := d.(*types.VirtualDisk); ok {
			out = append(out, disk)
		}
	}
	return out
}

// findDisk returns the VM's disk with the device key, or its first disk for key 0.
func findDisk(vm *simulator.VirtualMachine, key int32) (*types.VirtualDisk, error) {
	for _, disk := range disksOf(vm.Config.Hardware.Device) {
		if key == 0 || disk.Key == key {
			return disk, nil
		}
	}
	return nil, notFoundError{fmt.Sprintf("disk %d of %s", key, vm.Name)}
}

// flatBacking returns the disk's FlatVer2 backing, the only kind the bed simulates.
func flatBacking(disk *types.VirtualDisk) (*types.VirtualDiskFlatVer2BackingInfo, error) {
	b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		return nil, fmt.Errorf("disk %d: backing %T is not simulated", disk.Key, disk.Backing)
	}
	return b, nil
}

func capacityOf(disk *types.VirtualDisk) int64 {
	if disk.CapacityInBytes != 0 {
		return disk.CapacityInBytes
	}
	return disk.CapacityInKB * 1024
}

func setCapacity(disk *types.VirtualDisk, capacity int64) {
	disk.CapacityInBytes = capacity
	disk.CapacityInKB = capacity / 1024
}

// localPath maps a datastore path to the file on the local disk.
func localPath(dsPath string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		return "", fmt.Errorf("not a datastore path: %q", dsPath)
	}
	for _, e := range simulator.Map.All("Datastore") {
		if ds := e.(*simulator.Datastore); ds.Name == p.Datastore {
			return filepath.Join(ds.Info.GetDatastoreInfo().Url, filepath.FromSlash(p.Path)), nil
		}
	}
	return "", notFoundError{fmt.Sprintf("datastore %q", p.Datastore)}
}

// localFlat returns the local path of the -flat.vmdk behind a descriptor's datastore path.
func localFlat(descriptor string) (string, error) {
	return localPath(flatName(descriptor))
}

// siblingPath returns a datastore path in the same directory as dsPath.
func siblingPath(dsPath, base string) string {
	var p object.DatastorePath
	p.FromString(dsPath)
	p.Path = path.Join(path.Dir(p.Path), base)
	return p.String()
}

// ensureDiskUUID gives a disk the backing uuid vSphere would ("6000C29x-..."), once.
func ensureDiskUUID(b *types.VirtualDiskFlatVer2BackingInfo) {
	if b.Uuid != "" {
		return
	}
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[0], u[1], u[2], u[3] = 0x60, 0x00, 0xc2, 0x90|u[3]&0x0f
	h := fmt.Sprintf("%x", u)
	b.Uuid = strings.ToUpper(h[:8]) + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ddbUUID renders a backing uuid the way descriptors store it: "60 00 c2 9a ...-... ".
func ddbUUID(backingUUID string) string {
	h := strings.ToLower(strings.ReplaceAll(backingUUID, "-", ""))
	if len(h) != 32 {
		return ""
	}
	pairs := make([]string, 16)
	for i := range pairs {
		pairs[i] = h[2*i : 2*i+2]
	}
	return strings.Join(pairs[:8], " ") + "-" + strings.Join(pairs[8:], " ")
}

// diskInfo is how the control API describes a disk.
type diskInfo struct {
	Key      int32  `json:"key"`
	FileName string `json:"file_name"`
	Path     string `json:"path"`
	Capacity int64  `json:"capacity"`
	UUID     string `json:"uuid"`
}

func describeDisk(disk *types.VirtualDisk) (diskInfo, error) {
	b, err := flatBacking(disk)
	if err != nil {
		return diskInfo{}, err
	}
	flat, err := localFlat(b.FileName)
	if err != nil {
		return diskInfo{}, err
	}
	return diskInfo{Key: disk.Key, FileName: b.FileName, Path: flat, Capacity: capacityOf(disk), UUID: b.Uuid}, nil
}
