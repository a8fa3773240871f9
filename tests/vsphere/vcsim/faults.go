package main

// Fault injection: tests arm a fault kind for the next N matching calls (or every call, N < 0)
// and the bed answers those calls with a task that fails like vCenter's would.

import (
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	// faultQuiesce fails quiesced CreateSnapshot_Task calls (no VMware Tools / VSS error);
	// non-quiesced snapshots still succeed, so the crash-consistent retry path can be tested.
	faultQuiesce = "quiesce"
	// faultSnapshot fails every CreateSnapshot_Task call.
	faultSnapshot = "snapshot"
	// faultTask fails the next *_Task call of any kind.
	faultTask = "task"
)

var faultKinds = map[string]bool{faultQuiesce: true, faultSnapshot: true, faultTask: true}

type faultQueue struct {
	mu    sync.Mutex
	armed map[string]int // remaining failures per kind; negative means "until cleared"
}

func (q *faultQueue) arm(kind string, count int) error {
	if !faultKinds[kind] {
		return fmt.Errorf("unknown fault kind %q", kind)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.armed == nil {
		q.armed = map[string]int{}
	}
	if count == 0 {
		delete(q.armed, kind)
	} else {
		q.armed[kind] = count
	}
	return nil
}

func (q *faultQueue) clear() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.armed = nil
}

// take consumes one armed failure of kind, reporting whether the call must fail.
func (q *faultQueue) take(kind string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	n, ok := q.armed[kind]
	if !ok {
		return false
	}
	if n > 0 {
		if n == 1 {
			delete(q.armed, kind)
		} else {
			q.armed[kind] = n - 1
		}
	}
	return true
}

func injectedFault(kind string) (string, types.BaseMethodFault) {
	switch kind {
	case faultQuiesce:
		return "An error occurred while quiescing the virtual machine (injected)", &types.ApplicationQuiesceFault{}
	case faultSnapshot:
		return "An error occurred while saving the snapshot (injected)", &types.SnapshotFault{}
	default:
		return "A general system error occurred: injected task failure", &types.SystemError{Reason: "injected"}
	}
}

// failTask answers method (a "Foo_Task" call on this) with a task that has already failed.
func failTask(w http.ResponseWriter, method string, this types.ManagedObjectReference, kind string) {
	msg, fault := injectedFault(kind)
	name := strings.TrimSuffix(method, "_Task")
	name = strings.ToLower(name[:1]) + name[1:]
	task := simulator.CreateTask(this, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	simulator.Map.WithLock(task, func() {
		if task.Info.Error != nil {
			task.Info.Error.LocalizedMessage = msg
		}
	})
	writeTaskResult(w, method, ref)
}
