package main

// The snapshot log, for tests that must prove how many snapshots were open at once (GET
// /vmaccel-test/snapshot-events?since=N answers the records with seq > N, oldest first).
//
//   - "created": a CreateSnapshot_Task succeeded and the bed froze the snapshot's disks. The
//     record is appended under bed.mu before the task's answer is relayed, so it precedes the
//     moment any client can see the task succeed. A task that fails (injected fault, freezing
//     failed) appends nothing.
//   - "removed": a logged snapshot is gone: vcsim no longer has it (RemoveSnapshot_Task with
//     or without children, RemoveAllSnapshots_Task) or its VM left the inventory (Destroy_Task,
//     UnregisterVM, the bed's own cleanup). Appended when the bed sees it gone, again before the
//     removing call is answered. Several snapshots gone in one call are appended in the order
//     they were created. The bed has no separate consolidation: removal is the whole story.
//
// Records are appended in the order the bed applied the changes (bed.mu serialises both kinds),
// so replaying them by seq gives the snapshots open at every moment. A record names the VM and
// the datastores of its disks as they were when the snapshot was taken; a removal repeats what
// its creation recorded.

import (
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	register(extension{
		name: "snapshot log",
		routes: func(b *bed) map[string]controlFunc {
			return map[string]controlFunc{"GET snapshot-events": b.listSnapshotEvents}
		},
	})
}

// snapshotTimeFormat is RFC 3339 in UTC with microseconds, always sub-second.
const snapshotTimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// snapshotEvent is one entry of the snapshot log.
type snapshotEvent struct {
	Seq           int      `json:"seq"`            // 1, 2, ... in order of the bed's processing
	Event         string   `json:"event"`          // "created" or "removed"
	VM            string   `json:"vm"`             // the VM's name when the snapshot was taken
	VMMoref       string   `json:"vm_moref"`       // "vm-57"
	Snapshot      string   `json:"snapshot"`       // the snapshot's name
	SnapshotMoref string   `json:"snapshot_moref"` // "snapshot-123"
	Datastores    []string `json:"datastores"`     // of the VM's disks, sorted, no duplicates
	Time          string   `json:"time"`           // snapshotTimeFormat
}

// snapshotLog is the bed's (bed.snaps); the zero value is empty and ready. It is safe for
// concurrent use; its lock is a leaf (nothing else is taken under it but vcsim's registry
// lookups).
type snapshotLog struct {
	mu     sync.Mutex
	events []snapshotEvent
	open   map[string]snapshotEvent // snapshot moref value -> its "created" record
}

// snapshotCreated logs a snapshot vcsim made and the bed froze. Caller holds bed.mu and no
// vcsim lock.
func (b *bed) snapshotCreated(vmRef, snapRef types.ManagedObjectReference, name string) {
	ev := snapshotEvent{Event: "created", VMMoref: vmRef.Value, Snapshot: name,
		SnapshotMoref: snapRef.Value, Datastores: []string{}}
	if vm, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine); ok {
		simulator.Map.WithLock(vm, func() {
			ev.VM = vm.Name
			ev.Datastores = diskDatastores(vm)
		})
	}
	b.snaps.add(ev)
}

// snapshotsGone logs the removal of every logged snapshot vcsim no longer has or whose VM left
// the inventory. Caller holds bed.mu.
func (b *bed) snapshotsGone() {
	b.snaps.sweep()
}

// diskDatastores names the datastores of the VM's disks, sorted. Caller holds the VM's lock.
func diskDatastores(vm *simulator.VirtualMachine) []string {
	seen := map[string]bool{}
	out := []string{}
	for _, disk := range disksOf(vm.Config.Hardware.Device) {
		fb, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			continue
		}
		var p object.DatastorePath
		if p.FromString(fb.GetVirtualDeviceFileBackingInfo().FileName) && !seen[p.Datastore] {
			seen[p.Datastore] = true
			out = append(out, p.Datastore)
		}
	}
	sort.Strings(out)
	return out
}

func (l *snapshotLog) add(ev snapshotEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open == nil {
		l.open = map[string]snapshotEvent{}
	}
	l.open[ev.SnapshotMoref] = l.appendLocked(ev)
}

// appendLocked stamps ev with the next seq and the time now, appends it and returns the
// stamped record. Caller holds l.mu.
func (l *snapshotLog) appendLocked(ev snapshotEvent) snapshotEvent {
	ev.Seq = len(l.events) + 1
	ev.Time = time.Now().UTC().Format(snapshotTimeFormat)
	l.events = append(l.events, ev)
	return ev
}

func (l *snapshotLog) sweep() {
	l.mu.Lock()
	defer l.mu.Unlock()
	var gone []snapshotEvent
	for id, ev := range l.open {
		snap := types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: id}
		vm := types.ManagedObjectReference{Type: "VirtualMachine", Value: ev.VMMoref}
		if simulator.Map.Get(snap) != nil && simulator.Map.Get(vm) != nil {
			continue
		}
		gone = append(gone, ev)
		delete(l.open, id)
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].Seq < gone[j].Seq })
	for _, ev := range gone {
		ev.Event = "removed"
		l.appendLocked(ev)
	}
}

// since returns the records with Seq > seq.
func (l *snapshotLog) since(seq int) []snapshotEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	if seq < 0 {
		seq = 0
	}
	if seq > len(l.events) {
		seq = len(l.events)
	}
	return append([]snapshotEvent{}, l.events[seq:]...)
}

func (b *bed) listSnapshotEvents(r *http.Request, _ controlRequest) (interface{}, error) {
	since, err := queryInt(r, "since")
	if err != nil {
		return nil, err
	}
	return b.snaps.since(int(since)), nil
}
