package main

// The control API for tests, under /vmaccel-test/ on the same server (no authentication: the bed
// listens on loopback only). Requests and answers are JSON, except /write whose body is the raw
// bytes to write. Errors answer {"error": "..."} with 404 (unknown VM/disk) or 400.
//
//	GET  /vmaccel-test/vms                                   -> [{name, moref, power_state, disks}]
//	POST /vmaccel-test/attach-disk {vm, disk, image}        -> disk (image becomes the disk)
//	POST /vmaccel-test/add-disk    {vm, image | capacity}   -> disk (a new disk on the VM)
//	POST /vmaccel-test/grow-disk   {vm, disk, capacity}     -> disk
//	POST /vmaccel-test/write?vm=&disk=&offset=  <bytes>     -> disk (a guest write)
//	POST /vmaccel-test/apply-image {vm, disk, image, writes} -> {written, extents, rewritten, tracked}
//	POST /vmaccel-test/reset-cbt   {vm}                      -> {}
//	POST /vmaccel-test/faults      {kind, count, after, method, bytes}
//	                                                         -> {}   (count 0 disarms, <0 sticky)
//	DELETE /vmaccel-test/faults                              -> {}
//	POST /vmaccel-test/power       {vm, state}               -> {}
//	GET  /vmaccel-test/vm-config?vm=                          -> the VM's config (vmconfig.go)
//	GET  /vmaccel-test/vm-events?since=                       -> VMs created/removed (vmlife.go)
//	GET  /vmaccel-test/snapshot-events?since=                 -> snapshots created/removed (snaplog.go)
//	GET  /vmaccel-test/uploads?since=                         -> /folder and NFC uploads (upload.go)
//	POST /vmaccel-test/lease-timeout {seconds}               -> {}  (nfc.go)
//
// "disk" is a device key; 0 means the VM's first disk.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const controlPrefix = "/vmaccel-test/"

// controlRequest is the union of the JSON request fields.
type controlRequest struct {
	VM       string  `json:"vm"`
	Disk     int32   `json:"disk"`
	Image    string  `json:"image"`
	Capacity int64   `json:"capacity"`
	Kind     string  `json:"kind"`
	Count    int     `json:"count"`
	State    string  `json:"state"`
	After    int     `json:"after"`   // faults: matching calls let through first
	Method   string  `json:"method"`  // faults: SOAP method the fault is limited to
	Bytes    int64   `json:"bytes"`   // faults: folder body bytes before the cut
	Writes   string  `json:"writes"`  // apply-image: the guest's write log (parseWriteLog), optional
	Seconds  float64 `json:"seconds"` // lease-timeout
}

type controlFunc func(r *http.Request, req controlRequest) (interface{}, error)

func (b *bed) controlRoutes() map[string]controlFunc {
	routes := map[string]controlFunc{
		"GET vms":          b.listVMs,
		"POST attach-disk": b.attachDisk,
		"POST add-disk":    b.addDisk,
		"POST grow-disk":   b.growDisk,
		"POST write":       b.guestWrite,
		"POST apply-image": b.applyImage,
		"POST reset-cbt":   b.resetCBT,
		"POST faults":      b.armFault,
		"DELETE faults":    b.clearFaults,
		"POST power":       b.setPower,
	}
	for route, f := range b.extraRoutes {
		routes[route] = f
	}
	return routes
}

func (b *bed) control(w http.ResponseWriter, r *http.Request) {
	route := r.Method + " " + strings.TrimPrefix(r.URL.Path, controlPrefix)
	f := b.controlRoutes()[route]
	if f == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no control endpoint " + route})
		return
	}
	var req controlRequest
	if r.Method == http.MethodPost && r.URL.Path != controlPrefix+"write" {
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil && err != io.EOF {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad JSON: " + err.Error()})
			return
		}
	}
	res, err := f(r, req)
	if err != nil {
		status := http.StatusBadRequest
		if errors.As(err, new(notFoundError)) {
			status = http.StatusNotFound
		}
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type vmInfo struct {
	Name       string     `json:"name"`
	Moref      string     `json:"moref"`
	PowerState string     `json:"power_state"`
	Disks      []diskInfo `json:"disks"`
}

func (b *bed) listVMs(*http.Request, controlRequest) (interface{}, error) {
	out := []vmInfo{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		var info vmInfo
		var err error
		simulator.Map.WithLock(vm, func() {
			info = vmInfo{Name: vm.Name, Moref: vm.Self.Value, PowerState: string(vm.Runtime.PowerState)}
			for _, disk := range disksOf(vm.Config.Hardware.Device) {
				var d diskInfo
				if d, err = describeDisk(disk); err != nil {
					return
				}
				info.Disks = append(info.Disks, d)
			}
		})
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// withDisk runs f on a VM's disk holding bed.mu and the VM's lock.
func (b *bed) withDisk(vmID string, key int32, f func(*simulator.VirtualMachine, *types.VirtualDisk) error) (diskInfo, error) {
	vm, err := findVM(vmID)
	if err != nil {
		return diskInfo{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var info diskInfo
	simulator.Map.WithLock(vm, func() {
		var disk *types.VirtualDisk
		if disk, err = findDisk(vm, key); err != nil {
			return
		}
		if err = f(vm, disk); err == nil {
			info, err = describeDisk(disk)
		}
	})
	return info, err
}

func (b *bed) guestWrite(r *http.Request, _ controlRequest) (interface{}, error) {
	q := r.URL.Query()
	offset, err := strconv.ParseInt(q.Get("offset"), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("offset: %v", err)
	}
	key, err := strconv.ParseInt(q.Get("disk"), 10, 32)
	if err != nil {
		return nil, fmt.Errorf("disk: %v", err)
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	return b.withDisk(q.Get("vm"), int32(key), func(vm *simulator.VirtualMachine, disk *types.VirtualDisk) error {
		if offset < 0 || offset+int64(len(data)) > capacityOf(disk) {
			return fmt.Errorf("write of %d bytes at %d is outside the disk (capacity %d)",
				len(data), offset, capacityOf(disk))
		}
		info, err := describeDisk(disk)
		if err != nil {
			return err
		}
		if err = unshare(info.Path); err != nil {
			return err
		}
		if err = writeAt(info.Path, offset, data); err != nil {
			return err
		}
		b.recordWrite(vm, disk.Key, extent{offset, int64(len(data))})
		return nil
	})
}

// applyImage makes the disk's content equal to req.Image by writing the 4 KiB blocks that
// differ, and records them for CBT. With req.Writes (the guest's write log, byte extents) it
// also records the blocks the guest wrote with unchanged bytes, as a real tracker would.
// Answers written (bytes that differed), extents (their count), rewritten (bytes of the log
// outside them) and tracked (what QueryChangedDiskAreas answers for this call's writes alone:
// rounded out to the -ctk-block granularity and merged).
func (b *bed) applyImage(_ *http.Request, req controlRequest) (interface{}, error) {
	var written, rewritten, tracked int64
	var count int
	_, err := b.withDisk(req.VM, req.Disk, func(vm *simulator.VirtualMachine, disk *types.VirtualDisk) error {
		info, err := describeDisk(disk)
		if err != nil {
			return err
		}
		if st, err := os.Stat(req.Image); err != nil {
			return err
		} else if st.Size() > info.Capacity {
			return fmt.Errorf("image of %d bytes exceeds the disk (capacity %d): grow the disk first",
				st.Size(), info.Capacity)
		}
		var logged []extent
		if req.Writes != "" {
			text, err := os.ReadFile(req.Writes)
			if err != nil {
				return err
			}
			if logged, err = parseWriteLog(text, info.Capacity); err != nil {
				return err
			}
		}
		extents, err := diffBlocks(info.Path, req.Image, 4096)
		if err != nil {
			return err
		}
		if len(extents) > 0 {
			if err = unshare(info.Path); err != nil {
				return err
			}
		}
		err = copyExtents(info.Path, req.Image, extents)
		all := mergeExtents(append(append([]extent{}, extents...), logged...))
		for _, e := range all { // also after a failed copy: CBT may report a superset
			b.recordWrite(vm, disk.Key, e)
		}
		written = extentBytes(extents)
		rewritten = extentBytes(all) - written
		tracked = trackedBytes(all, b.block, info.Capacity)
		if err != nil {
			return err
		}
		count = len(extents)
		return nil
	})
	return map[string]int64{
		"written": written, "extents": int64(count), "rewritten": rewritten, "tracked": tracked,
	}, err
}

func (b *bed) resetCBT(_ *http.Request, req controlRequest) (interface{}, error) {
	vm, err := findVM(req.VM)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	simulator.Map.WithLock(vm, func() { b.resetTracking(vm) })
	return struct{}{}, nil
}

func (b *bed) armFault(_ *http.Request, req controlRequest) (interface{}, error) {
	f := armedFault{count: req.Count, after: req.After, method: req.Method, bytes: req.Bytes}
	return struct{}{}, b.faults.arm(req.Kind, f)
}

func (b *bed) clearFaults(*http.Request, controlRequest) (interface{}, error) {
	b.faults.clear()
	return struct{}{}, nil
}
