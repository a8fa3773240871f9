package main

// NFC imports: ResourcePool.ImportVApp creates the VM (disks made real as for CreateVM_Task,
// vmlife.go) and an HttpNfcLease whose deviceUrl "https://*/nfc/<lease>/<disk>.vmdk" takes a
// PUT or POST of a streamOptimized VMDK. vcsim discards those bytes; the bed decodes them
// (streamvmdk.go) into the disk's -flat.vmdk, thin (blockWriter). HttpNfcLeaseComplete ends
// the lease and keeps the VM; HttpNfcLeaseAbort, or no progress for the lease timeout
// (HttpNfcLeaseProgress and uploads keep a lease alive; POST /vmaccel-test/lease-timeout
// {"seconds": s} sets it for new leases, 300 s by default), removes the half-made VM with its
// files. Uploads to a lease that is gone answer 404, as vcsim does for unknown leases.

import (
	"fmt"
	"net/http"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	register(extension{
		name: "nfc",
		hooks: func(b *bed) map[string]soapHook {
			return map[string]soapHook{
				"ImportVApp":           b.importVApp,
				"HttpNfcLeaseComplete": b.leaseEnd,
				"HttpNfcLeaseAbort":    b.leaseEnd,
				"HttpNfcLeaseProgress": b.leaseProgress,
			}
		},
		routes: func(b *bed) map[string]controlFunc {
			return map[string]controlFunc{"POST lease-timeout": b.setLeaseTimeout}
		},
		paths: func(b *bed) map[string]http.HandlerFunc {
			return map[string]http.HandlerFunc{"/nfc/": b.serveNFC}
		},
	})
}

const defaultLeaseTimeout = 300 * time.Second

// lease is the bed's side of an HttpNfcLease of an import.
type lease struct {
	id      string
	vm      types.ManagedObjectReference
	disks   map[string]int32 // deviceUrl file name -> disk key
	state   string           // "ready", then "done", "aborted" or "timedout"
	active  int              // uploads in progress
	expires *time.Timer
}

// leases holds the import leases; its mutex is taken inside bed.mu, never around it.
type leases struct {
	mu      sync.Mutex
	byID    map[string]*lease
	timeout time.Duration
}

func (l *leases) get(id string) *lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byID[id]
}

func (b *bed) setLeaseTimeout(_ *http.Request, req controlRequest) (interface{}, error) {
	if req.Seconds <= 0 {
		return nil, fmt.Errorf("seconds must be positive")
	}
	b.leases.mu.Lock()
	defer b.leases.mu.Unlock()
	b.leases.timeout = time.Duration(req.Seconds * float64(time.Second))
	return struct{}{}, nil
}

func (b *bed) importVApp(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	req := call.Body.(*types.ImportVApp)
	spec, ok := req.Spec.(*types.VirtualMachineImportSpec)
	if !ok {
		b.next.ServeHTTP(w, withBody(r, body)) // vcsim's own InvalidArgument
		return
	}
	folder := req.Folder
	if folder == nil {
		if dc := datacenterOf(req.This); dc != nil {
			folder = &dc.VmFolder
		}
	}
	if folder != nil {
		if f := refuseSpec(*folder, req.This, &spec.ConfigSpec); f != nil {
			writeFault(w, f.msg, f.fault)
			return
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	before := vmSet()
	rec := forward(b.next, r, body)
	ref, ok := returnedRef(rec)
	if !ok || ref.Type != "HttpNfcLease" {
		relay(w, rec)
		return
	}
	vm, err := newVM(before)
	if err == nil {
		err = b.vmCreated(nil, vm.Self, call.Name, addedDisks(spec.ConfigSpec.DeviceChange))
	}
	if err != nil {
		writeFault(w, "Cannot import the virtual machine: "+err.Error(), &types.SystemError{Reason: err.Error()})
		return
	}
	b.openLease(ref.Value, vm)
	relay(w, rec)
}

func vmSet() map[string]bool {
	out := map[string]bool{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		out[e.(*simulator.VirtualMachine).Self.Value] = true
	}
	return out
}

// newVM returns the one VM not in before.
func newVM(before map[string]bool) (*simulator.VirtualMachine, error) {
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm := e.(*simulator.VirtualMachine); !before[vm.Self.Value] {
			return vm, nil
		}
	}
	return nil, fmt.Errorf("ImportVApp created no VM")
}

// openLease records a new lease and arms its timeout. Caller holds bed.mu.
func (b *bed) openLease(id string, vm *simulator.VirtualMachine) {
	l := &lease{id: id, vm: vm.Self, disks: map[string]int32{}, state: "ready"}
	simulator.Map.WithLock(vm, func() {
		for _, disk := range disksOf(vm.Config.Hardware.Device) {
			if fb, err := flatBacking(disk); err == nil {
				var p object.DatastorePath
				if p.FromString(fb.FileName) {
					l.disks[path.Base(p.Path)] = disk.Key // as vcsim names the deviceUrl
				}
			}
		}
	})
	b.leases.mu.Lock()
	defer b.leases.mu.Unlock()
	if b.leases.byID == nil {
		b.leases.byID = map[string]*lease{}
	}
	if b.leases.timeout == 0 {
		b.leases.timeout = defaultLeaseTimeout
	}
	l.expires = time.AfterFunc(b.leases.timeout, func() { b.expireLease(id) })
	b.leases.byID[id] = l
}

// touch postpones a lease's timeout (progress or upload activity).
func (b *bed) touch(l *lease) {
	b.leases.mu.Lock()
	defer b.leases.mu.Unlock()
	if l.state == "ready" {
		l.expires.Reset(b.leases.timeout)
	}
}

func (b *bed) expireLease(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.leases.get(id)
	if l == nil {
		return
	}
	b.leases.mu.Lock()
	if l.state != "ready" || l.active > 0 {
		if l.state == "ready" {
			l.expires.Reset(b.leases.timeout)
		}
		b.leases.mu.Unlock()
		return
	}
	l.state = "timedout"
	b.leases.mu.Unlock()
	if vm, ok := simulator.Map.Get(l.vm).(*simulator.VirtualMachine); ok {
		b.removeVM(vm, true, "lease timeout")
	}
}

func (b *bed) leaseProgress(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	if l := b.leases.get(call.This.Value); l != nil {
		b.touch(l)
	}
	b.next.ServeHTTP(w, withBody(r, body))
}

// leaseEnd handles HttpNfcLeaseComplete and HttpNfcLeaseAbort.
func (b *bed) leaseEnd(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.leases.get(call.This.Value)
	if l == nil {
		relay(w, forward(b.next, r, body))
		return
	}
	b.leases.mu.Lock()
	state, active := l.state, l.active
	b.leases.mu.Unlock()
	switch {
	case state == "timedout":
		writeFault(w, "The lease timed out; the import was removed.", &types.Timedout{})
		return
	case state != "ready":
		writeFault(w, "The lease is no longer valid ("+state+").", &types.InvalidState{})
		return
	case active > 0 && call.Name == "HttpNfcLeaseComplete":
		writeFault(w, "An upload of this lease is still in progress.", &types.InvalidState{})
		return
	}
	rec := forward(b.next, r, body)
	if rec.Code == http.StatusOK {
		b.leases.mu.Lock()
		l.expires.Stop()
		l.state = "done"
		if call.Name == "HttpNfcLeaseAbort" {
			l.state = "aborted"
		}
		b.leases.mu.Unlock()
		if vm, ok := simulator.Map.Get(l.vm).(*simulator.VirtualMachine); ok && l.state == "aborted" {
			b.removeVM(vm, true, call.Name)
		}
	}
	relay(w, rec)
}

// serveNFC takes PUT/POST uploads of a lease's files; other methods go to vcsim.
func (b *bed) serveNFC(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut && r.Method != http.MethodPost {
		b.next.ServeHTTP(w, r)
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/nfc/"), "/")
	rec := uploadRecord{Kind: "nfc", Method: r.Method, Status: http.StatusNotFound}
	status, err := b.nfcUpload(r, parts, &rec)
	rec.Status = status
	if err != nil {
		rec.Error = err.Error()
	}
	b.uploads.add(rec)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	w.WriteHeader(status)
}

func (b *bed) nfcUpload(r *http.Request, parts []string, rec *uploadRecord) (int, error) {
	if len(parts) != 2 {
		return http.StatusNotFound, fmt.Errorf("not an NFC file URL: %s", r.URL.Path)
	}
	l := b.leases.get(parts[0])
	if l == nil {
		return http.StatusNotFound, fmt.Errorf("invalid NFC lease: %s", parts[0])
	}
	b.leases.mu.Lock()
	key, known := l.disks[parts[1]]
	ready := l.state == "ready"
	if ready && known {
		l.active++
	}
	b.leases.mu.Unlock()
	if !ready || !known {
		return http.StatusNotFound, fmt.Errorf("lease %s (%s) has no open file %s", l.id, l.state, parts[1])
	}
	defer func() {
		b.leases.mu.Lock()
		l.active--
		b.leases.mu.Unlock()
		b.touch(l)
	}()
	rec.VM, rec.Disk = l.vm.Value, key
	return b.storeNFCDisk(r, l, key, rec)
}

// storeNFCDisk decodes the upload into a new file and swaps it in as the disk's flat file.
func (b *bed) storeNFCDisk(r *http.Request, l *lease, key int32, rec *uploadRecord) (int, error) {
	vm, ok := simulator.Map.Get(l.vm).(*simulator.VirtualMachine)
	if !ok {
		return http.StatusNotFound, notFoundError{"virtual machine " + l.vm.Value}
	}
	var info diskInfo
	var err error
	simulator.Map.WithLock(vm, func() {
		var disk *types.VirtualDisk
		if disk, err = findDisk(vm, key); err == nil {
			info, err = describeDisk(disk)
		}
	})
	if err != nil {
		return http.StatusNotFound, err
	}
	rec.FileName, rec.Path, rec.Size = flatName(info.FileName), info.Path, info.Capacity
	tmp := info.Path + ".nfc"
	body := &countingReader{r: r.Body}
	bw, err := newBlockWriter(tmp)
	if err != nil {
		return http.StatusInternalServerError, err
	}
	_, err = decodeStreamOptimized(body, info.Capacity, bw)
	rec.BytesReceived = body.n
	if err != nil {
		bw.Abort()
		_ = os.Remove(tmp)
		return http.StatusBadRequest, err
	}
	if err = bw.Close(info.Capacity); err != nil {
		_ = os.Remove(tmp)
		return http.StatusInternalServerError, err
	}
	rec.DataBytes = bw.data
	b.mu.Lock()
	defer b.mu.Unlock()
	if l.state != "ready" { // aborted or timed out meanwhile: the VM is gone
		_ = os.Remove(tmp)
		return http.StatusNotFound, fmt.Errorf("lease %s ended during the upload (%s)", l.id, l.state)
	}
	if err = os.Rename(tmp, info.Path); err != nil {
		return http.StatusInternalServerError, err
	}
	return http.StatusOK, nil
}
