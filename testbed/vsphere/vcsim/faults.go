package main

// Fault injection: tests arm a fault kind for the next N matching calls (or every call, N < 0),
// optionally letting the first `after` matching calls through and, for "session", matching only
// one SOAP method. The bed answers the failing calls as vCenter would: a failed task, a SOAP
// fault, or (for "folder") a /folder download whose connection drops part way.

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
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
	// faultSession answers SOAP calls with NotAuthenticated, as for an expired session, and
	// /folder downloads (method "folder") with 401; the calls that open a session (Login*,
	// RetrieveServiceContent, Logout) are never failed.
	faultSession = "session"
	// faultQCDA answers QueryChangedDiskAreas with a SystemError, on any page of the loop.
	faultQCDA = "qcda"
	// faultFolder cuts a /folder GET after `bytes` body bytes (headers promise the whole range).
	faultFolder = "folder"
	// faultLogin refuses SessionManager.Login with InvalidLogin (credentials revoked).
	faultLogin = "login"
)

var faultKinds = map[string]bool{
	faultQuiesce: true, faultSnapshot: true, faultTask: true,
	faultSession: true, faultQCDA: true, faultFolder: true, faultLogin: true,
}

// sessionless are the SOAP methods an expired session may still call (vcsim's own list).
var sessionless = map[string]bool{
	"RetrieveServiceContent": true, "Login": true, "LoginByToken": true,
	"LoginExtensionByCertificate": true, "Logout": true,
}

// armedFault is one armed kind: how many calls fail and which.
type armedFault struct {
	count  int    // remaining failures; negative means "until cleared"
	after  int    // matching calls still let through before the first failure
	method string // only calls of this SOAP method match ("" = any)
	bytes  int64  // folder: body bytes sent before the connection drops
}

type faultQueue struct {
	mu    sync.Mutex
	armed map[string]armedFault
}

func (q *faultQueue) arm(kind string, f armedFault) error {
	if !faultKinds[kind] {
		return fmt.Errorf("unknown fault kind %q", kind)
	}
	if f.after < 0 || f.bytes < 0 {
		return fmt.Errorf("after and bytes must not be negative")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.armed == nil {
		q.armed = map[string]armedFault{}
	}
	if f.count == 0 {
		delete(q.armed, kind)
	} else {
		q.armed[kind] = f
	}
	return nil
}

func (q *faultQueue) clear() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.armed = nil
}

// take consumes one armed failure of kind for a call of method, reporting whether the call
// must fail (and the armed fault, for its parameters).
func (q *faultQueue) take(kind, method string) (armedFault, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	f, ok := q.armed[kind]
	if !ok || (f.method != "" && f.method != method) {
		return f, false
	}
	if f.after > 0 {
		f.after--
		q.armed[kind] = f
		return f, false
	}
	if f.count > 0 {
		if f.count == 1 {
			delete(q.armed, kind)
		} else {
			f.count--
			q.armed[kind] = f
		}
	}
	return f, true
}

// failSession answers a call as vCenter answers one made with an expired session.
func failSession(w http.ResponseWriter, this types.ManagedObjectReference) {
	fault := &types.NotAuthenticated{NoPermission: types.NoPermission{Object: this, PrivilegeId: "System.View"}}
	writeFault(w, "The session is not authenticated. (injected)", fault)
}

// cutFolder serves a /folder GET whose body stops after f.bytes bytes: the status and headers
// (Content-Length, Content-Range) are vcsim's, then the connection is dropped.
func cutFolder(next http.Handler, w http.ResponseWriter, r *http.Request, f armedFault) {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(rec.Body.Len()))
	w.WriteHeader(rec.Code)
	body := rec.Body.Bytes()
	if int64(len(body)) > f.bytes {
		body = body[:f.bytes]
	}
	_, _ = w.Write(body)
	if flusher, ok := w.(http.Flusher); ok {
		flusher.Flush()
	}
	panic(http.ErrAbortHandler) // net/http closes the connection without finishing the body
}

func injectedFault(kind string) (string, types.BaseMethodFault) {
	switch kind {
	case faultQuiesce:
		return "An error occurred while quiescing the virtual machine (injected)", &types.ApplicationQuiesceFault{}
	case faultSnapshot:
		return "An error occurred while saving the snapshot (injected)", &types.SnapshotFault{}
	case faultQCDA:
		return "A general system error occurred: injected QueryChangedDiskAreas failure", &types.SystemError{Reason: "injected"}
	default:
		return "A general system error occurred: injected task failure", &types.SystemError{Reason: "injected"}
	}
}

// failTask answers method (a "Foo_Task" call on this) with a task that has already failed.
func failTask(w http.ResponseWriter, method string, this types.ManagedObjectReference, kind string) {
	msg, fault := injectedFault(kind)
	failTaskFault(w, method, this, &methodFault{msg, fault})
}

// failTaskFault answers method (a "Foo_Task" call on this) with a task failed with f.
func failTaskFault(w http.ResponseWriter, method string, this types.ManagedObjectReference, f *methodFault) {
	name := strings.TrimSuffix(method, "_Task")
	name = strings.ToLower(name[:1]) + name[1:]
	task := simulator.CreateTask(this, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, f.fault
	})
	ref := task.Run()
	simulator.Map.WithLock(task, func() {
		if task.Info.Error != nil {
			task.Info.Error.LocalizedMessage = f.msg
		}
	})
	writeTaskResult(w, method, ref)
}
