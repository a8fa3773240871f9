package main

// Removing VMs (see vmlife.go): Destroy_Task deletes the VM's disk files wherever they live
// unless another VM uses them, UnregisterVM keeps them; both forget the VM's change tracking
// and frozen snapshot copies and are logged.

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func (b *bed) destroyVM(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	vm, ok := simulator.Map.Get(call.This).(*simulator.VirtualMachine)
	if !ok {
		b.afterSuccess(b.dropVanishedSnapshots)(w, r, body, call)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var name string
	var files []string
	simulator.Map.WithLock(vm, func() { name, files = vm.Name, diskFiles(vm) })
	rec := forward(b.next, r, body)
	if _, ok := succeededTask(rec); ok {
		b.vmGone(call.This, name, "destroyed", call.Name)
		removeUnused(files)
	}
	relay(w, rec)
}

func (b *bed) unregisterVM(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	vm, ok := simulator.Map.Get(call.This).(*simulator.VirtualMachine)
	if !ok {
		b.next.ServeHTTP(w, withBody(r, body))
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var name string
	simulator.Map.WithLock(vm, func() { name = vm.Name })
	rec := forward(b.next, r, body)
	if rec.Code == http.StatusOK {
		b.vmGone(call.This, name, "unregistered", call.Name)
	}
	relay(w, rec)
}

// vmGone forgets a VM that left the inventory: its trackers and its frozen snapshot copies.
// Caller holds bed.mu.
func (b *bed) vmGone(ref types.ManagedObjectReference, name, event, method string) {
	for id := range b.trackers {
		if id.vm == ref.Value {
			delete(b.trackers, id)
		}
	}
	for id, rec := range b.snapshots {
		if rec.vm == ref {
			removeFrozen(rec)
			delete(b.snapshots, id)
		}
	}
	b.dropVanishedSnapshots(ref)
	b.events.add(event, method, name, ref.Value)
}

// removeVM destroys a VM the bed could not complete (bypassing the hooks), with its disk
// files if withFiles; method is what the VM log names as the cause.
// Caller holds bed.mu and no vcsim lock.
func (b *bed) removeVM(vm *simulator.VirtualMachine, withFiles bool, method string) {
	var name string
	var files []string
	simulator.Map.WithLock(vm, func() { name, files = vm.Name, diskFiles(vm) })
	ctx := context.Background()
	task, err := object.NewVirtualMachine(b.client, vm.Self).Destroy(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		log.Printf("removing half-made VM %s: %v", name, err)
		return
	}
	b.vmGone(vm.Self, name, "destroyed", method)
	if withFiles {
		removeUnused(files)
	}
}

// diskFiles lists the local descriptor and flat files of a VM's disks. Caller holds the VM's lock.
func diskFiles(vm *simulator.VirtualMachine) []string {
	var out []string
	for _, disk := range disksOf(vm.Config.Hardware.Device) {
		if b, err := flatBacking(disk); err == nil {
			if p, err := localPath(b.FileName); err == nil {
				out = append(out, p, flatName(p))
			}
		}
	}
	return out
}

// removeUnused deletes the files no VM of the inventory uses as a disk any more.
func removeUnused(files []string) {
	used := map[string]bool{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		simulator.Map.WithLock(vm, func() {
			for _, p := range diskFiles(vm) {
				used[p] = true
			}
		})
	}
	for _, p := range files {
		if !used[p] {
			_ = os.Remove(p)
		}
	}
}
