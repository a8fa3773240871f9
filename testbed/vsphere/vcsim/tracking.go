package main

// Glue between vcsim's VM config (changeTrackingEnabled) and the per-disk trackers. Like ESXi,
// a tracker exists only while tracking is enabled: disabling drops it, re-enabling starts a new
// one with a new uuid, so every earlier changeId becomes invalid. Callers hold bed.mu and
// simulator.Map.WithLock(vm).

import (
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func trackingEnabled(vm *simulator.VirtualMachine) bool {
	return vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
}

// liveTracker returns the disk's tracker, starting or dropping it to match enabled.
func (b *bed) liveTracker(vm *simulator.VirtualMachine, key int32, enabled bool) *tracker {
	id := diskID{vm.Self.Value, key}
	if !enabled {
		delete(b.trackers, id)
		return nil
	}
	t := b.trackers[id]
	if t == nil {
		t = newTracker()
		b.trackers[id] = t
	}
	return t
}

// syncAllTracking runs after ReconfigVM_Task, which may have switched tracking on or off.
func (b *bed) syncAllTracking(this types.ManagedObjectReference) {
	vm, ok := simulator.Map.Get(this).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	simulator.Map.WithLock(vm, func() {
		enabled := trackingEnabled(vm)
		for _, disk := range disksOf(vm.Config.Hardware.Device) {
			b.liveTracker(vm, disk.Key, enabled)
		}
	})
}

// recordWrite notes a guest write in the disk's tracker, if tracking is on.
func (b *bed) recordWrite(vm *simulator.VirtualMachine, key int32, e extent) {
	if t := b.liveTracker(vm, key, trackingEnabled(vm)); t != nil {
		t.record(e)
	}
}

// resetTracking models what ESXi does after a power loss: the ctk files are reinitialised with
// a new uuid, so all earlier changeIds are rejected.
func (b *bed) resetTracking(vm *simulator.VirtualMachine) {
	enabled := trackingEnabled(vm)
	for _, disk := range disksOf(vm.Config.Hardware.Device) {
		delete(b.trackers, diskID{vm.Self.Value, disk.Key})
		b.liveTracker(vm, disk.Key, enabled)
	}
}
