package main

// QueryChangedDiskAreas, which vcsim 0.24 lacks. One call answers one window of at most
// bed.window bytes starting at startOffset, and, with bed.maxExtents > 0, of at most that many
// changed extents (as ESXi bounds its answer by the extents it returns): the window then ends
// where the last returned extent ends. DiskChangeInfo.startOffset/length describe the window,
// so callers loop until startOffset+length reaches the capacity. Faults follow vSphere:
// FileFault when the change tracking data cannot be used (tracking off, changeId unknown, from
// another disk or from before a reset), NotFound for a snapshot that is gone, InvalidArgument
// for a bad device key or startOffset.

import (
	"fmt"
	"net/http"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type methodFault struct {
	msg   string
	fault types.BaseMethodFault
}

// diskState is what a query runs against: a frozen snapshot disk, or the VM's current disk.
type diskState struct {
	name     string   // datastore path of the disk, for fault messages
	file     string   // local raw file
	capacity int64    // bytes
	tracker  *tracker // the tracker that served the disk then; nil if tracking was off
	endGen   int      // changes of generations < endGen are included
	live     *tracker // the disk's tracker now
}

func (b *bed) queryChangedDiskAreas(w http.ResponseWriter, _ *http.Request, _ []byte, call *simulator.Method) {
	req := call.Body.(*types.QueryChangedDiskAreas)
	if takes(&b.faults, faultQCDA, call.Name) {
		msg, fault := injectedFault(faultQCDA)
		writeFault(w, msg, fault)
		return
	}
	b.mu.Lock()
	info, fault := b.changedAreas(req)
	b.mu.Unlock()
	if fault != nil {
		writeFault(w, fault.msg, fault.fault)
		return
	}
	writeResult(w, types.QueryChangedDiskAreasResponse{Returnval: info})
}

func (b *bed) changedAreas(req *types.QueryChangedDiskAreas) (types.DiskChangeInfo, *methodFault) {
	var info types.DiskChangeInfo
	st, fault := b.queryTarget(req)
	if fault != nil {
		return info, fault
	}
	if req.StartOffset < 0 || req.StartOffset >= st.capacity {
		msg := fmt.Sprintf("startOffset %d is outside the disk (capacity %d)", req.StartOffset, st.capacity)
		return info, &methodFault{msg, &types.InvalidArgument{InvalidProperty: "startOffset"}}
	}
	if st.tracker == nil || st.tracker != st.live {
		return info, fileFault(st.name, "change tracking is not active for this disk or was reset")
	}
	end := st.capacity
	if req.StartOffset+b.window < end {
		end = req.StartOffset + b.window
	}
	extents, more, fault := b.changes(req.ChangeId, st, req.StartOffset, end)
	if fault != nil {
		return info, fault
	}
	extents = clip(extents, req.StartOffset, end)
	if n := b.maxExtents; n > 0 && len(extents) >= n && (more || len(extents) > n) {
		extents = extents[:n]
		end = extents[n-1].end()
	}
	info.StartOffset, info.Length = req.StartOffset, end-req.StartOffset
	for _, e := range extents {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: e.start, Length: e.length})
	}
	return info, nil
}

// changes answers one window: allocated areas for "*", else the tracked writes since changeId.
// more is true when the "*" scan stopped after bed.maxExtents extents (there are more).
func (b *bed) changes(changeID string, st diskState, start, end int64) ([]extent, bool, *methodFault) {
	if changeID == "*" {
		extents, more, err := allocatedExtents(st.file, b.block, start, end, b.maxExtents)
		if err != nil {
			return nil, false, fileFault(st.name, err.Error())
		}
		return extents, more, nil
	}
	from, ok := st.tracker.sequenceOf(changeID)
	if !ok || from > st.endGen {
		return nil, false, fileFault(st.name, fmt.Sprintf("changeId %q is not valid for this disk", changeID))
	}
	return st.tracker.changedSince(from, st.endGen, b.block, st.capacity), false, nil
}

func fileFault(file, why string) *methodFault {
	return &methodFault{"Error caused by file " + file + ": " + why, &types.FileFault{File: file}}
}

func invalidArgument(property, msg string) *methodFault {
	return &methodFault{msg, &types.InvalidArgument{InvalidProperty: property}}
}

// queryTarget resolves (VM, snapshot, deviceKey) to the disk the query runs against.
func (b *bed) queryTarget(req *types.QueryChangedDiskAreas) (diskState, *methodFault) {
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		return diskState{}, &methodFault{"no such VM", &types.ManagedObjectNotFound{Obj: req.This}}
	}
	if req.Snapshot != nil {
		return b.snapshotTarget(req)
	}
	var st diskState
	var fault *methodFault
	simulator.Map.WithLock(vm, func() {
		if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
			fault = invalidArgument("snapshot", "a snapshot is required unless the VM is powered off")
			return
		}
		disk, err := findDisk(vm, req.DeviceKey)
		if err != nil || req.DeviceKey == 0 {
			fault = invalidArgument("deviceKey", fmt.Sprintf("no disk with device key %d", req.DeviceKey))
			return
		}
		info, err := describeDisk(disk)
		if err != nil {
			fault = fileFault(info.FileName, err.Error())
			return
		}
		live := b.liveTracker(vm, disk.Key, trackingEnabled(vm))
		st = diskState{name: info.FileName, file: info.Path, capacity: info.Capacity, tracker: live, live: live}
		if live != nil {
			st.endGen = live.gen + 1 // the current generation's writes are part of "now"
		}
	})
	return st, fault
}

func (b *bed) snapshotTarget(req *types.QueryChangedDiskAreas) (diskState, *methodFault) {
	rec := b.snapshots[req.Snapshot.Value]
	if rec == nil || simulator.Map.Get(*req.Snapshot) == nil {
		return diskState{}, &methodFault{"snapshot " + req.Snapshot.Value + " not found", &types.NotFound{}}
	}
	if rec.vm != req.This {
		return diskState{}, invalidArgument("snapshot", "the snapshot belongs to another VM")
	}
	fd := rec.disks[req.DeviceKey]
	if fd == nil {
		msg := fmt.Sprintf("no disk with device key %d in the snapshot", req.DeviceKey)
		return diskState{}, invalidArgument("deviceKey", msg)
	}
	vm := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	var live *tracker
	simulator.Map.WithLock(vm, func() { live = b.liveTracker(vm, req.DeviceKey, trackingEnabled(vm)) })
	return diskState{name: fd.descriptor, file: fd.flat, capacity: fd.capacity, tracker: fd.tracker, endGen: fd.seq, live: live}, nil
}
