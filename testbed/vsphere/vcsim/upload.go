package main

// Uploads into datastores. A /folder PUT (or POST, which refuses an existing file with 409)
// replaces the whole file, as on ESXi: ranges are ignored, the body becomes the file. The bed
// stores it thin, like a VMFS/NFS thin file: 1 MiB blocks that are all zero stay holes, so a
// restored -flat.vmdk uploaded there is what a VM created over it sees, holes included. The
// file is written under a temporary name and renamed over the target (a new inode), so a
// frozen snapshot copy that shared the old file keeps its bytes.
//
// Every upload (here and NFC, nfc.go) is logged for tests: GET /vmaccel-test/uploads?since=N.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/simulator"
)

func init() {
	register(extension{
		name: "uploads",
		routes: func(b *bed) map[string]controlFunc {
			return map[string]controlFunc{"GET uploads": b.listUploads}
		},
	})
}

// uploadRecord is one upload as the control API reports it. Sizes are bytes.
type uploadRecord struct {
	Seq           int    `json:"seq"`
	Kind          string `json:"kind"` // "folder" or "nfc"
	Method        string `json:"method"`
	FileName      string `json:"file_name"` // datastore path of the file written
	Path          string `json:"path"`      // its local path
	BytesReceived int64  `json:"bytes_received"`
	DataBytes     int64  `json:"data_bytes"` // bytes stored as data (not holes)
	Size          int64  `json:"size"`       // the file's size afterwards
	Status        int    `json:"status"`
	Error         string `json:"error"`
	VM            string `json:"vm,omitempty"`   // nfc: the VM's moref
	Disk          int32  `json:"disk,omitempty"` // nfc: the disk's device key
}

type uploadLog struct {
	mu      sync.Mutex
	records []uploadRecord
}

func (l *uploadLog) add(rec uploadRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rec.Seq = len(l.records) + 1
	l.records = append(l.records, rec)
}

func (b *bed) listUploads(r *http.Request, _ controlRequest) (interface{}, error) {
	since, err := queryInt(r, "since")
	if err != nil {
		return nil, err
	}
	b.uploads.mu.Lock()
	defer b.uploads.mu.Unlock()
	if since < 0 || since > int64(len(b.uploads.records)) {
		since = 0
	}
	return append([]uploadRecord{}, b.uploads.records[since:]...), nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// folderUpload serves a /folder PUT or POST.
func (b *bed) folderUpload(w http.ResponseWriter, r *http.Request) {
	rec := uploadRecord{Kind: "folder", Method: r.Method}
	status, err := b.storeFolderUpload(r, &rec)
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

func (b *bed) storeFolderUpload(r *http.Request, rec *uploadRecord) (int, error) {
	ds, err := b.findDatastore(r.URL.Query())
	if err != nil {
		return http.StatusNotFound, err
	}
	rel := strings.TrimPrefix(path.Clean("/"+strings.TrimPrefix(r.URL.Path, "/folder/")), "/")
	if rel == "" {
		return http.StatusBadRequest, fmt.Errorf("no file named")
	}
	rec.FileName = fmt.Sprintf("[%s] %s", ds.Name, rel)
	target := filepath.Join(ds.Info.GetDatastoreInfo().Url, filepath.FromSlash(rel))
	rec.Path = target
	_, statErr := os.Stat(target)
	exists := statErr == nil
	if r.Method == http.MethodPost && exists {
		return http.StatusConflict, fmt.Errorf("%s exists", rec.FileName)
	}
	if err = os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return http.StatusInternalServerError, err
	}
	body := &countingReader{r: r.Body}
	tmp := target + ".upload"
	size, data, err := writeThin(tmp, body)
	rec.BytesReceived, rec.DataBytes, rec.Size = body.n, data, size
	if err != nil {
		_ = os.Remove(tmp)
		return http.StatusInternalServerError, err
	}
	b.mu.Lock()
	err = os.Rename(tmp, target)
	b.mu.Unlock()
	if err != nil {
		return http.StatusInternalServerError, err
	}
	if exists {
		return http.StatusOK, nil
	}
	return http.StatusCreated, nil
}

// findDatastore resolves dcPath and dsName the way vcsim's /folder handler does.
func (b *bed) findDatastore(q url.Values) (*simulator.Datastore, error) {
	ctx := context.Background()
	finder := find.NewFinder(b.client, false)
	dc, err := finder.DatacenterOrDefault(ctx, q.Get("dcPath"))
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	ds, err := finder.DatastoreOrDefault(ctx, q.Get("dsName"))
	if err != nil {
		return nil, err
	}
	found, ok := simulator.Map.Get(ds.Reference()).(*simulator.Datastore)
	if !ok {
		return nil, notFoundError{"datastore " + q.Get("dsName")}
	}
	return found, nil
}

// writeThin writes a stream into a new file thin: all-zero holeBlock blocks stay holes.
// Returns the file size and the bytes stored as data.
func writeThin(file string, src io.Reader) (size, data int64, err error) {
	bw, err := newBlockWriter(file)
	if err != nil {
		return 0, 0, err
	}
	buf := make([]byte, holeBlock)
	for {
		n, rerr := io.ReadFull(src, buf)
		if n > 0 {
			if err = bw.WriteAt(buf[:n], size); err != nil {
				bw.Abort()
				return size, bw.data, err
			}
			size += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			bw.Abort()
			return size, bw.data, rerr
		}
	}
	err = bw.Close(size)
	return size, bw.data, err
}

// blockWriter writes into a new file the way a thin VMFS file is allocated: a holeBlock block
// that receives any non-zero byte is written whole, all-zero blocks stay holes. Writes may
// come in any order; a block written earlier is read back before it is changed again.
type blockWriter struct {
	f       *os.File
	buf     []byte
	cur     int64 // index of the buffered block, -1 for none
	dirty   bool  // the buffered block holds data
	flushed map[int64]bool
	data    int64 // bytes written as data so far
}

func newBlockWriter(file string) (*blockWriter, error) {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	return &blockWriter{f: f, buf: make([]byte, holeBlock), cur: -1, flushed: map[int64]bool{}}, nil
}

// WriteAt stores p at byte offset off.
func (w *blockWriter) WriteAt(p []byte, off int64) error {
	for len(p) > 0 {
		block, in := off/holeBlock, off%holeBlock
		if block != w.cur {
			if err := w.load(block); err != nil {
				return err
			}
		}
		n := copy(w.buf[in:], p)
		if !w.dirty && !isZero(p[:n]) {
			w.dirty = true
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (w *blockWriter) load(block int64) error {
	if err := w.flush(); err != nil {
		return err
	}
	for i := range w.buf {
		w.buf[i] = 0
	}
	w.cur, w.dirty = block, w.flushed[block]
	if w.dirty {
		if _, err := w.f.ReadAt(w.buf, block*holeBlock); err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

func (w *blockWriter) flush() error {
	if w.cur < 0 || !w.dirty {
		return nil
	}
	if _, err := w.f.WriteAt(w.buf, w.cur*holeBlock); err != nil {
		return err
	}
	if !w.flushed[w.cur] {
		w.data += holeBlock
	}
	w.flushed[w.cur] = true
	return nil
}

// Close flushes and sets the file's size (bytes); data then counts only bytes below size.
func (w *blockWriter) Close(size int64) error {
	err := w.flush()
	if err == nil {
		err = w.f.Truncate(size)
	}
	if last := (size - 1) / holeBlock; size%holeBlock != 0 && w.flushed[last] {
		w.data -= holeBlock - size%holeBlock
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Abort closes the file without finishing it (the caller removes it).
func (w *blockWriter) Abort() {
	_ = w.f.Close()
}
