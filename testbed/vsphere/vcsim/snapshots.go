package main

// Frozen snapshots. vcsim's snapshot.config is a shallow copy of the VM's config and no delta
// disk is made, so the bed freezes each disk itself: a copy <disk>-<snapshot moref>.vmdk
// (descriptor + -flat) which the snapshot's config then names, carrying the changeId. The frozen
// -flat is a hard link to the disk's (instant, like ESXi's redirect-on-write); the VM keeps
// writing to its own disk, which is first given a private copy while a snapshot shares it
// (unshare in diskfile.go). Unlike vSphere (snapshot names the base, the VM a new
// -00000N.vmdk delta) the frozen copy is the new file, but what a backup reads is the same:
// snapshot.config's disk holds the bytes as of the snapshot until the snapshot is removed.

import (
	"log"
	"net/http"
	"os"
	"path"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func (b *bed) createSnapshot(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	req := call.Body.(*types.CreateSnapshot_Task)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, kind := range []string{faultQuiesce, faultSnapshot} {
		if (kind != faultQuiesce || req.Quiesce) && takes(&b.faults, kind, call.Name) {
			failTask(w, call.Name, req.This, kind)
			return
		}
	}
	rec := forward(b.next, r, body)
	if task, ok := succeededTask(rec); ok {
		var snap types.ManagedObjectReference
		simulator.Map.WithLock(task, func() { snap, _ = task.Info.Result.(types.ManagedObjectReference) })
		if err := b.freeze(req.This, snap); err != nil {
			log.Printf("freezing disks of %s: %v", snap, err)
			failFinishedTask(task, err)
		} else {
			b.snapshotCreated(req.This, snap, req.Name)
		}
	}
	relay(w, rec)
}

// takes reports whether an armed fault of kind fails this call of method.
func takes(q *faultQueue, kind, method string) bool {
	_, ok := q.take(kind, method)
	return ok
}

// failFinishedTask turns a task vcsim completed into a failed one (the bed could not do its part).
func failFinishedTask(task *simulator.Task, err error) {
	simulator.Map.Update(task, []types.PropertyChange{
		{Name: "info.state", Val: types.TaskInfoStateError},
		{Name: "info.result", Val: nil},
		{Name: "info.error", Val: types.LocalizedMethodFault{Fault: &types.FileFault{}, LocalizedMessage: err.Error()}},
	})
}

// freeze copies every disk of the VM and points the snapshot's config at the copies. Lock order
// follows vcsim's (snapshot, then VM: RemoveSnapshot_Task takes them so).
func (b *bed) freeze(vmRef, snapRef types.ManagedObjectReference) error {
	vm, okVM := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	snap, okSnap := simulator.Map.Get(snapRef).(*simulator.VirtualMachineSnapshot)
	if !okVM || !okSnap {
		return notFoundError{"snapshot " + snapRef.Value}
	}
	rec := &snapshotRecord{vm: vmRef, disks: map[int32]*frozenDisk{}}
	b.snapshots[snapRef.Value] = rec
	var err error
	simulator.Map.WithLock(snap, func() {
		simulator.Map.WithLock(vm, func() {
			enabled := trackingEnabled(vm)
			devices := make([]types.BaseVirtualDevice, len(snap.Config.Hardware.Device))
			copy(devices, snap.Config.Hardware.Device) // the slice is shared with the VM's config
			for i, dev := range devices {
				if disk, ok := dev.(*types.VirtualDisk); ok && err == nil {
					devices[i], err = b.freezeDisk(vm, disk, snapRef.Value, enabled, rec)
				}
			}
			if err == nil {
				snap.Config.Hardware.Device = devices
			}
		})
	})
	return err
}

// freezeDisk copies one disk and returns the device the snapshot's config shows for it.
func (b *bed) freezeDisk(vm *simulator.VirtualMachine, disk *types.VirtualDisk, snapID string,
	tracking bool, rec *snapshotRecord) (types.BaseVirtualDevice, error) {
	backing, err := flatBacking(disk)
	if err != nil {
		return disk, nil // not a flat disk: left as vcsim made it
	}
	ensureDiskUUID(backing)
	capacity := capacityOf(disk)
	src, err := localFlat(backing.FileName)
	if err != nil {
		return nil, err
	}
	descriptor := strings.TrimSuffix(backing.FileName, ".vmdk") + "-" + snapID + ".vmdk"
	localDescriptor, err := localPath(descriptor)
	if err != nil {
		return nil, err
	}
	fd := &frozenDisk{descriptor: descriptor, flat: flatName(localDescriptor), capacity: capacity}
	if err = freezeLink(fd.flat, src, capacity); err != nil {
		return nil, err
	}
	err = writeDescriptor(localDescriptor, path.Base(fd.flat), capacity, ddbUUID(backing.Uuid))
	if err != nil {
		return nil, err
	}
	clone, frozenBacking := *disk, *backing
	frozenBacking.FileName = descriptor
	frozenBacking.ChangeId = ""
	if t := b.liveTracker(vm, disk.Key, tracking); t != nil {
		fd.tracker, fd.seq = t, t.closeGeneration()
		frozenBacking.ChangeId = t.changeID(fd.seq)
	}
	clone.Backing = &frozenBacking
	rec.disks[disk.Key] = fd
	return &clone, nil
}

// dropVanishedSnapshots deletes the frozen copies of snapshots vcsim no longer has (removed
// alone, with their children, all at once, or with their VM).
func (b *bed) dropVanishedSnapshots(types.ManagedObjectReference) {
	for id, rec := range b.snapshots {
		ref := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: id}
		if simulator.Map.Get(ref) != nil {
			continue
		}
		removeFrozen(rec)
		delete(b.snapshots, id)
	}
	b.snapshotsGone()
}

// removeFrozen deletes a snapshot's frozen disk copies.
func removeFrozen(rec *snapshotRecord) {
	for _, fd := range rec.disks {
		_ = os.Remove(fd.flat)
		if p, err := localPath(fd.descriptor); err == nil {
			_ = os.Remove(p)
		}
	}
}

// revertToSnapshot links the frozen disks back as the VM's disks after vcsim reverted.
// The whole disk is recorded as written: to change tracking a revert rewrites the disk.
func (b *bed) revertToSnapshot(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	b.mu.Lock()
	defer b.mu.Unlock()
	target := call.This
	if call.Name == "RevertToCurrentSnapshot_Task" {
		if vm, ok := simulator.Map.Get(call.This).(*simulator.VirtualMachine); ok {
			simulator.Map.WithLock(vm, func() {
				if vm.Snapshot != nil && vm.Snapshot.CurrentSnapshot != nil {
					target = *vm.Snapshot.CurrentSnapshot
				}
			})
		}
	}
	rec := forward(b.next, r, body)
	if task, ok := succeededTask(rec); ok {
		if err := b.restoreFrozen(target); err != nil {
			log.Printf("reverting disks to %s: %v", target, err)
			failFinishedTask(task, err)
		}
	}
	relay(w, rec)
}

func (b *bed) restoreFrozen(snapRef types.ManagedObjectReference) error {
	rec := b.snapshots[snapRef.Value]
	if rec == nil {
		return nil
	}
	vm, ok := simulator.Map.Get(rec.vm).(*simulator.VirtualMachine)
	if !ok {
		return notFoundError{"virtual machine " + rec.vm.Value}
	}
	var err error
	simulator.Map.WithLock(vm, func() {
		for key, fd := range rec.disks {
			if err != nil {
				return
			}
			var disk *types.VirtualDisk
			var info diskInfo
			if disk, err = findDisk(vm, key); err != nil {
				return
			}
			if info, err = describeDisk(disk); err != nil {
				return
			}
			if err = linkOver(info.Path, fd.flat); err == nil {
				setCapacity(disk, fd.capacity)
				b.recordWrite(vm, key, extent{0, fd.capacity})
			}
		}
	})
	return err
}
