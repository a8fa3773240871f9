package main

// VM life cycle as restores need it. vcsim 0.24 creates VMs and disks as metadata with empty
// files; the bed makes them real:
//
//   - CreateVM_Task and ReconfigVM_Task (and ImportVApp, see nfc.go): a VirtualDisk added with
//     fileOperation "create" (or "replace") gets a sparse -flat.vmdk of its capacity (thin: all
//     hole) and a vmfs descriptor, and a backing uuid; a disk added with fileOperation unset
//     attaches to an existing file, and the bed takes its capacity and uuid from that file's
//     descriptor (or the -flat size), as ESXi does. Device keys negative in the spec are replaced
//     by vcsim with positive ones. changeTrackingEnabled in the spec is honoured like on the
//     bed's other VMs (tracking.go).
//   - A NIC on a network the datacenter does not have is refused with InvalidDeviceSpec (vcsim
//     would panic).
//   - Destroy_Task removes the VM's files, its disks included (wherever they live, unless another
//     VM uses them), as vSphere does; UnregisterVM leaves the files. Both drop the VM's change
//     tracking and frozen snapshot copies.
//
// Every creation and removal is logged for tests (GET /vmaccel-test/vm-events).

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	register(extension{
		name: "vm life cycle",
		hooks: func(b *bed) map[string]soapHook {
			return map[string]soapHook{
				"CreateVM_Task":   b.createVM,
				"ReconfigVM_Task": b.reconfigVM,
				"Destroy_Task":    b.destroyVM,
				"UnregisterVM":    b.unregisterVM,
			}
		},
		routes: func(b *bed) map[string]controlFunc {
			return map[string]controlFunc{"GET vm-events": b.listEvents}
		},
	})
}

// vmEvent is one entry of the VM log: a VM created, destroyed or unregistered.
type vmEvent struct {
	Seq    int    `json:"seq"`    // 1, 2, ... in order of the bed's processing
	Event  string `json:"event"`  // "created", "destroyed", "unregistered"
	Method string `json:"method"` // the SOAP method that caused it
	Name   string `json:"name"`
	Moref  string `json:"moref"`
	Time   string `json:"time"` // RFC 3339 with nanoseconds, UTC
}

type eventLog struct {
	mu     sync.Mutex
	events []vmEvent
}

func (l *eventLog) add(event, method, name, moref string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, vmEvent{Seq: len(l.events) + 1, Event: event, Method: method,
		Name: name, Moref: moref, Time: time.Now().UTC().Format(time.RFC3339Nano)})
}

// since returns the events with Seq > seq.
func (l *eventLog) since(seq int) []vmEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	if seq < 0 {
		seq = 0
	}
	if seq > len(l.events) {
		seq = len(l.events)
	}
	return append([]vmEvent{}, l.events[seq:]...)
}

func (b *bed) listEvents(r *http.Request, _ controlRequest) (interface{}, error) {
	since, err := queryInt(r, "since")
	if err != nil {
		return nil, err
	}
	return b.events.since(int(since)), nil
}

// queryInt parses an optional integer query parameter (0 when absent).
func queryInt(r *http.Request, name string) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %v", name, err)
	}
	return n, nil
}

// diskAdd is a disk the spec adds, in spec order.
type diskAdd struct {
	fileOperation types.VirtualDeviceConfigSpecFileOperation
}

func addedDisks(changes []types.BaseVirtualDeviceConfigSpec) []diskAdd {
	var out []diskAdd
	for _, c := range changes {
		spec := c.GetVirtualDeviceConfigSpec()
		if _, ok := spec.Device.(*types.VirtualDisk); ok && spec.Operation == types.VirtualDeviceConfigSpecOperationAdd {
			out = append(out, diskAdd{spec.FileOperation})
		}
	}
	return out
}

func (b *bed) createVM(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	req := call.Body.(*types.CreateVM_Task)
	if f := refuseSpec(req.This, req.This, &req.Config); f != nil {
		failTaskFault(w, call.Name, req.This, f)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	rec := forward(b.next, r, body)
	if task, ok := succeededTask(rec); ok {
		var ref types.ManagedObjectReference
		simulator.Map.WithLock(task, func() { ref, _ = task.Info.Result.(types.ManagedObjectReference) })
		b.vmCreated(task, ref, call.Name, addedDisks(req.Config.DeviceChange))
	}
	relay(w, rec)
}

// vmCreated makes the disks of a VM vcsim just created real and logs the creation. When the
// bed cannot, the VM is destroyed again and task (if any) fails: no half-made VM stays.
// Caller holds bed.mu.
func (b *bed) vmCreated(task *simulator.Task, ref types.ManagedObjectReference, method string, disks []diskAdd) error {
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return notFoundError{"virtual machine " + ref.Value}
	}
	err := b.realiseDisks(vm, map[int32]bool{}, disks)
	if err != nil {
		b.removeVM(vm, true, "bed cleanup")
		if task != nil {
			failFinishedTask(task, err)
		}
		return err
	}
	b.events.add("created", method, vm.Name, ref.Value)
	return nil
}

func (b *bed) reconfigVM(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	req := call.Body.(*types.ReconfigVM_Task)
	if i, name, ok := unknownNetwork(req.This, req.Spec.DeviceChange); !ok {
		failTaskFault(w, call.Name, req.This, invalidNetwork(i, name))
		return
	}
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		b.next.ServeHTTP(w, withBody(r, body))
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	before := map[int32]bool{}
	simulator.Map.WithLock(vm, func() {
		for _, d := range disksOf(vm.Config.Hardware.Device) {
			before[d.Key] = true
		}
	})
	rec := forward(b.next, r, body)
	if task, ok := succeededTask(rec); ok {
		b.syncAllTracking(req.This)
		err := b.realiseDisks(vm, before, addedDisks(req.Spec.DeviceChange))
		if err == nil {
			err = extendEdited(vm, req.Spec.DeviceChange)
		}
		if err != nil {
			failFinishedTask(task, err)
		}
	}
	relay(w, rec)
}

// refuseSpec checks a new VM's spec as vCenter does before vcsim sees it: the name must be
// free in the folder (vcsim would allow duplicates) and every NIC's network must exist (vcsim
// would panic). entity locates the datacenter.
func refuseSpec(folder, entity types.ManagedObjectReference, spec *types.VirtualMachineConfigSpec) *methodFault {
	if f, ok := simulator.Map.Get(folder).(*simulator.Folder); ok {
		var taken *types.ManagedObjectReference
		simulator.Map.WithLock(f, func() {
			if e := simulator.Map.FindByName(spec.Name, f.ChildEntity); e != nil {
				ref := e.Reference()
				taken = &ref
			}
		})
		if taken != nil {
			return &methodFault{fmt.Sprintf("The name '%s' already exists.", spec.Name),
				&types.DuplicateName{Name: spec.Name, Object: *taken}}
		}
	}
	if i, name, ok := unknownNetwork(entity, spec.DeviceChange); !ok {
		return invalidNetwork(i, name)
	}
	return nil
}

// unknownNetwork finds the first NIC of changes on a network the datacenter of entity lacks.
func unknownNetwork(entity types.ManagedObjectReference, changes []types.BaseVirtualDeviceConfigSpec) (int, string, bool) {
	dc := datacenterOf(entity)
	if dc == nil {
		return 0, "", true
	}
	for i, c := range changes {
		nic, ok := c.GetVirtualDeviceConfigSpec().Device.(types.BaseVirtualEthernetCard)
		if !ok {
			continue
		}
		b, ok := nic.GetVirtualEthernetCard().Backing.(*types.VirtualEthernetCardNetworkBackingInfo)
		if ok && simulator.Map.FindByName(b.DeviceName, dc.Network) == nil {
			return i, b.DeviceName, false
		}
	}
	return 0, "", true
}

func invalidNetwork(i int, name string) *methodFault {
	return &methodFault{
		msg:   fmt.Sprintf("Invalid configuration for device '%d': network %q not found.", i, name),
		fault: &types.InvalidDeviceSpec{InvalidVmConfig: types.InvalidVmConfig{Property: "backing.deviceName"}, DeviceIndex: int32(i)},
	}
}

// datacenterOf walks up the inventory from an entity to its datacenter.
func datacenterOf(ref types.ManagedObjectReference) *simulator.Datacenter {
	obj := simulator.Map.Get(ref)
	for i := 0; obj != nil && i < 64; i++ {
		if dc, ok := obj.(*simulator.Datacenter); ok {
			return dc
		}
		e, ok := obj.(mo.Entity)
		if !ok || e.Entity().Parent == nil {
			return nil
		}
		obj = simulator.Map.Get(*e.Entity().Parent)
	}
	return nil
}
