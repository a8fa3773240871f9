package main

// The bed: an http.Handler in front of vcsim's. vcsim's VM objects cannot be wrapped (a dozen
// places type-assert *simulator.VirtualMachine), so everything the bed adds happens here, on the
// wire: a few SOAP methods are answered or post-processed (see soapHooks), /api speaks vAPI
// JSON-RPC, /vmaccel-test/ is the control API for tests; all else goes to vcsim untouched.
//
// Locking: bed.mu serialises every change of disk contents, snapshots and change tracking, and
// is held across a forwarded CreateSnapshot_Task so no guest write lands between vcsim creating
// the snapshot and the bed freezing its disks. vcsim's per-object locks (Map.WithLock) are taken
// inside bed.mu, never the other way round.

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

type diskID struct {
	vm  string // VM moref value
	key int32  // device key
}

// frozenDisk is one disk of a snapshot: a full copy of the disk at snapshot time.
type frozenDisk struct {
	descriptor string   // datastore path named by the snapshot's config
	flat       string   // local path of its -flat.vmdk
	capacity   int64    // bytes
	tracker    *tracker // the disk's tracker when the snapshot was taken, nil if CBT was off
	seq        int      // the snapshot's change sequence in tracker
}

type snapshotRecord struct {
	vm    types.ManagedObjectReference
	disks map[int32]*frozenDisk
}

type soapHook func(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method)

type bed struct {
	mu         sync.Mutex
	next       http.Handler
	client     *vim25.Client // in-process vim client, bypassing this layer (used by the control API)
	window     int64         // bytes covered by one QueryChangedDiskAreas answer, at most
	maxExtents int           // extents in one QueryChangedDiskAreas answer, at most (0: no limit)
	block      int64         // change tracking granularity
	trackers   map[diskID]*tracker
	snapshots  map[string]*snapshotRecord // by snapshot moref value
	faults     faultQueue
	hooks      map[string]soapHook
	vapi       *vapiBridge

	events      eventLog                    // VM creations and removals (vmlife.go)
	snaps       snapshotLog                 // snapshot creations and removals (snaplog.go)
	uploads     uploadLog                   // /folder and NFC uploads (upload.go, nfc.go)
	leases      leases                      // NFC import leases (nfc.go)
	extraRoutes map[string]controlFunc      // control routes of extensions (extensions.go)
	paths       map[string]http.HandlerFunc // URL path prefixes handled by extensions
}

func newBed(svc *simulator.Service, next http.Handler, window, block int64, maxExtents int) *bed {
	client, err := vim25.NewClient(context.Background(), svc)
	if err != nil {
		log.Fatalf("in-process client: %v", err)
	}
	b := &bed{
		next:       next,
		client:     client,
		window:     window,
		maxExtents: maxExtents,
		block:      block,
		trackers:   map[diskID]*tracker{},
		snapshots:  map[string]*snapshotRecord{},
	}
	b.hooks = map[string]soapHook{
		"CreateSnapshot_Task":          b.createSnapshot,
		"RemoveSnapshot_Task":          b.afterSuccess(b.dropVanishedSnapshots),
		"RemoveAllSnapshots_Task":      b.afterSuccess(b.dropVanishedSnapshots),
		"RevertToSnapshot_Task":        b.revertToSnapshot,
		"RevertToCurrentSnapshot_Task": b.revertToSnapshot,
		"QueryChangedDiskAreas":        b.queryChangedDiskAreas,
	}
	b.vapi = newVapiBridge(next, svc.Listen.User)
	b.installExtensions()
	return b
}

func (b *bed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := b.pathHandler(r); h != nil {
		h(w, r)
		return
	}
	switch {
	case strings.HasPrefix(r.URL.Path, controlPrefix):
		b.control(w, r)
	case r.URL.Path == "/api" && r.Method == http.MethodPost:
		b.vapi.ServeHTTP(w, r)
	case r.URL.Path == "/sdk" && r.Method == http.MethodPost:
		b.serveSOAP(w, r)
	case strings.HasPrefix(r.URL.Path, "/folder/") && (r.Method == http.MethodPut || r.Method == http.MethodPost):
		b.folderUpload(w, r) // upload.go
	case strings.HasPrefix(r.URL.Path, "/folder/") && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		if _, expired := b.faults.take(faultSession, "folder"); expired {
			http.Error(w, "session not authenticated (injected)", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodGet {
			if f, ok := b.faults.take(faultFolder, ""); ok {
				cutFolder(b.next, w, r, f)
				return
			}
		}
		b.next.ServeHTTP(w, r)
	default:
		b.next.ServeHTTP(w, r)
	}
}

func (b *bed) serveSOAP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	method := soapMethod(body)
	if method == "Login" && takes(&b.faults, faultLogin, method) {
		writeFault(w, "Cannot complete login due to an incorrect user name or password. (injected)",
			&types.InvalidLogin{})
		return
	}
	if !sessionless[method] {
		if _, expired := b.faults.take(faultSession, method); expired {
			if call, err := decodeSOAP(body); err == nil {
				failSession(w, call.This)
				return
			}
		}
	}
	hook := b.hooks[method]
	isTask := strings.HasSuffix(method, "_Task")
	if hook == nil && !isTask {
		b.next.ServeHTTP(w, withBody(r, body))
		return
	}
	call, err := decodeSOAP(body)
	if err != nil { // let vcsim produce its own fault for a malformed request
		b.next.ServeHTTP(w, withBody(r, body))
		return
	}
	if isTask && takes(&b.faults, faultTask, method) {
		failTask(w, method, call.This, faultTask)
		return
	}
	if hook == nil {
		b.next.ServeHTTP(w, withBody(r, body))
		return
	}
	hook(w, r, body, call)
}

func withBody(r *http.Request, body []byte) *http.Request {
	r.Body = io.NopCloser(strings.NewReader(string(body)))
	r.ContentLength = int64(len(body))
	return r
}

// afterSuccess forwards a task method to vcsim and runs f (under bed.mu) once the task succeeded.
func (b *bed) afterSuccess(f func(this types.ManagedObjectReference)) soapHook {
	return func(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
		b.mu.Lock()
		defer b.mu.Unlock()
		rec := forward(b.next, r, body)
		if _, ok := succeededTask(rec); ok {
			f(call.This)
		}
		relay(w, rec)
	}
}

// succeededTask returns the finished task vcsim answered with, if it succeeded (vcsim runs
// tasks synchronously, so the outcome is known when the response is written).
func succeededTask(rec *httptest.ResponseRecorder) (*simulator.Task, bool) {
	ref, ok := returnedRef(rec)
	if !ok || ref.Type != "Task" {
		return nil, false
	}
	task, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return nil, false
	}
	var state types.TaskInfoState
	simulator.Map.WithLock(task, func() { state = task.Info.State })
	return task, state == types.TaskInfoStateSuccess
}
