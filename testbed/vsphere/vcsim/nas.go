package main

// NAS datastores backed by a real NFS export, as instant recovery needs them.
//
//   - CreateNasDatastore mounts remoteHost:remotePath the way ESXi would: over NFS v3 from user
//     space (libnfs's nfs-ls/nfs-cat; this kernel has no NFS client), asking the server's
//     portmapper for the ports. An export that does not answer fails with HostConfigFault, as
//     on ESXi. vcsim needs a local directory behind every datastore (it checks that disk files
//     exist), so the bed keeps a name mirror there: small files (descriptors, .vmx, .json) are
//     copied over NFS, large ones are sparse placeholders of the right size. The bytes of the
//     datastore are on the export; tests read them over NFS (testbed/vsphere/nas.py).
//   - RemoveDatastore (missing in vcsim) unmounts it: refused with ResourceInUse while a VM
//     still uses it, as vSphere does.
//   - PUT /vmaccel-test/nas-ports {"host", "nfs_port", "mount_port"} pins the ports of an NFS
//     server instead of asking its portmapper (tests run several servers on one machine, and
//     rpcbind knows only the last one that registered); ports 0 remove the pin.
//   - RelocateVM_Task copies each disk that changes datastore (descriptor and -flat.vmdk, read
//     over NFS when the source is a NAS datastore, thin: zero blocks stay holes) into the VM's
//     directory on the target datastore, then repoints the disk backings (vcsim itself moves
//     only metadata).

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// mirrorLimit: files up to this size are copied into the mirror, larger ones are placeholders.
const mirrorLimit = 1 << 20

type nasVolume struct {
	host, remote string // remoteHost, remotePath
	dir          string // the local mirror vcsim sees as the datastore's url
}

// url is the libnfs URL of rel (a path in the export); dir adds a trailing slash.
func (v nasVolume) url(rel string, dir bool) string {
	u := "nfs://" + v.host + path.Join(v.remote, rel)
	if dir {
		u += "/"
	}
	nas.Lock()
	pin, ok := nas.ports[v.host]
	nas.Unlock()
	if ok {
		u += fmt.Sprintf("?nfsport=%d&mountport=%d", pin[0], pin[1])
	}
	return u
}

var nas = struct {
	sync.Mutex
	root    string
	volumes map[string]nasVolume // by datastore name
	ports   map[string][2]int    // host -> pinned (NFS, MOUNT) ports
}{volumes: map[string]nasVolume{}, ports: map[string][2]int{}}

type nasPorts struct {
	Host      string `json:"host"`
	NfsPort   int    `json:"nfs_port"`
	MountPort int    `json:"mount_port"`
}

func (b *bed) pinNasPorts(r *http.Request, _ controlRequest) (interface{}, error) {
	var p nasPorts
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil || p.Host == "" {
		return nil, fmt.Errorf("want {host, nfs_port, mount_port}: %v", err)
	}
	nas.Lock()
	defer nas.Unlock()
	if p.NfsPort == 0 && p.MountPort == 0 {
		delete(nas.ports, p.Host)
	} else {
		nas.ports[p.Host] = [2]int{p.NfsPort, p.MountPort}
	}
	return p, nil
}

func init() {
	register(extension{
		name: "nas",
		hooks: func(b *bed) map[string]soapHook {
			return map[string]soapHook{
				"CreateNasDatastore": b.createNasDatastore,
				"RemoveDatastore":    b.removeDatastore,
				"RelocateVM_Task":    b.relocateVM,
			}
		},
		routes: func(b *bed) map[string]controlFunc {
			return map[string]controlFunc{"PUT nas-ports": b.pinNasPorts}
		},
	})
}

// nasRoot is where the mirrors live: in the bed's -state-dir (removed with the bed), else in
// a temporary directory.
func nasRoot() (string, error) {
	if nas.root == "" {
		base := ""
		if f := flag.Lookup("state-dir"); f != nil {
			base = f.Value.String()
		}
		dir, err := os.MkdirTemp(base, "vmaccel-bed-nas-")
		if err != nil {
			return "", err
		}
		nas.root = dir
	}
	return nas.root, nil
}

// nfsList returns the entries of a directory on an export: name -> (is dir, size).
func nfsList(url string) (map[string]nfsEntry, error) {
	out, err := exec.Command("nfs-ls", url).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("NFS mount of %s failed: %s", url, strings.TrimSpace(string(out)))
	}
	entries := map[string]nfsEntry{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[5] == "." || f[5] == ".." {
			continue
		}
		size, _ := strconv.ParseInt(f[4], 10, 64)
		name := strings.Join(f[5:], " ")
		entries[name] = nfsEntry{dir: strings.HasPrefix(f[0], "d"), size: size}
	}
	return entries, nil
}

type nfsEntry struct {
	dir  bool
	size int64
}

// mirror recreates the names (and small files) of an export directory under local.
func mirror(v nasVolume, rel, local string) error {
	entries, err := nfsList(v.url(rel, true))
	if err != nil {
		return err
	}
	if err = os.MkdirAll(local, 0o755); err != nil {
		return err
	}
	for name, e := range entries {
		dst := filepath.Join(local, name)
		switch {
		case e.dir:
			err = mirror(v, path.Join(rel, name), dst)
		case e.size <= mirrorLimit:
			err = nfsCopy(v.url(path.Join(rel, name), false), dst, e.size)
		default:
			err = placeholder(dst, e.size)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func placeholder(dst string, size int64) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if err = f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// nfsCopy reads a file over NFS into a new local file of size bytes; all-zero blocks stay
// holes (thin).
func nfsCopy(url, dst string, size int64) error {
	cmd := exec.Command("nfs-cat", url)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	in, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err = cmd.Start(); err != nil {
		return err
	}
	werr := writeSparse(dst, in, size)
	if err = cmd.Wait(); err != nil {
		return fmt.Errorf("reading %s over NFS: %v %s", url, err, strings.TrimSpace(stderr.String()))
	}
	return werr
}

func writeSparse(dst string, in io.Reader, size int64) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err = out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	buf := make([]byte, copyChunk)
	var off int64
	for {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 {
			if err = writeNonZero(out, buf[:n], off); err != nil {
				out.Close()
				return err
			}
			off += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			out.Close()
			return rerr
		}
	}
	if off != size {
		out.Close()
		return fmt.Errorf("%s: read %d of %d bytes", dst, off, size)
	}
	return out.Close()
}

func (b *bed) createNasDatastore(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	req := call.Body.(*types.CreateNasDatastore)
	spec := req.Spec
	nas.Lock()
	root, err := nasRoot()
	_, taken := nas.volumes[spec.LocalPath]
	nas.Unlock()
	if err != nil {
		writeFault(w, err.Error(), &types.HostConfigFault{})
		return
	}
	if strings.ContainsAny(spec.LocalPath, "/\\") || spec.LocalPath == "" {
		writeFault(w, "invalid localPath "+spec.LocalPath, &types.InvalidArgument{InvalidProperty: "localPath"})
		return
	}
	v := nasVolume{host: spec.RemoteHost, remote: spec.RemotePath, dir: filepath.Join(root, spec.LocalPath)}
	if taken {
		writeFault(w, "datastore "+spec.LocalPath+" exists", &types.DuplicateName{Name: spec.LocalPath})
		return
	}
	if err = mirror(v, "", v.dir); err != nil {
		_ = os.RemoveAll(v.dir)
		writeFault(w, err.Error(), &types.HostConfigFault{})
		return
	}
	var escaped bytes.Buffer
	_ = xml.EscapeText(&escaped, []byte(spec.LocalPath))
	var dirText bytes.Buffer
	_ = xml.EscapeText(&dirText, []byte(v.dir))
	body = bytes.Replace(body, []byte("<localPath>"+escaped.String()+"</localPath>"),
		[]byte("<localPath>"+dirText.String()+"</localPath>"), 1)
	rec := forward(b.next, r, body)
	if rec.Code == http.StatusOK {
		nas.Lock()
		nas.volumes[spec.LocalPath] = v
		nas.Unlock()
	} else {
		_ = os.RemoveAll(v.dir)
	}
	relay(w, rec)
}

func (b *bed) removeDatastore(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	req := call.Body.(*types.RemoveDatastore)
	ds, ok := simulator.Map.Get(req.Datastore).(*simulator.Datastore)
	dss, ok2 := simulator.Map.Get(req.This).(*simulator.HostDatastoreSystem)
	if !ok || !ok2 {
		writeFault(w, "datastore not found", &types.NotFound{})
		return
	}
	if len(ds.Vm) > 0 {
		writeFault(w, fmt.Sprintf("datastore %s is in use by %d VMs", ds.Name, len(ds.Vm)),
			&types.ResourceInUse{Type: "Datastore", Name: ds.Name})
		return
	}
	simulator.Map.WithLock(dss, func() {
		dss.Datastore = without(dss.Datastore, ds.Self)
		dss.Host.Datastore = without(dss.Host.Datastore, ds.Self)
	})
	if host, ok := simulator.Map.Get(dss.Host.Self).(*simulator.HostSystem); ok {
		simulator.Map.WithLock(host, func() { host.Datastore = without(host.Datastore, ds.Self) })
		if host.Parent != nil {
			dropFromParent(*host.Parent, ds.Self)
		}
	}
	if ds.Parent != nil {
		if folder, ok := simulator.Map.Get(*ds.Parent).(*simulator.Folder); ok {
			simulator.Map.WithLock(folder, func() { folder.ChildEntity = without(folder.ChildEntity, ds.Self) })
		}
	}
	for _, e := range simulator.Map.All("Datacenter") {
		dc := e.(*simulator.Datacenter)
		simulator.Map.WithLock(dc, func() { dc.Datastore = without(dc.Datastore, ds.Self) })
	}
	simulator.Map.Remove(ds.Self)
	nas.Lock()
	if v, ok := nas.volumes[ds.Name]; ok {
		_ = os.RemoveAll(v.dir)
		delete(nas.volumes, ds.Name)
	}
	nas.Unlock()
	writeResult(w, types.RemoveDatastoreResponse{})
}

func dropFromParent(ref types.ManagedObjectReference, ds types.ManagedObjectReference) {
	switch p := simulator.Map.Get(ref).(type) {
	case *simulator.ClusterComputeResource:
		simulator.Map.WithLock(p, func() { p.Datastore = without(p.Datastore, ds) })
	case *mo.ComputeResource:
		simulator.Map.WithLock(p, func() { p.Datastore = without(p.Datastore, ds) })
	}
}

func without(refs []types.ManagedObjectReference, ref types.ManagedObjectReference) []types.ManagedObjectReference {
	out := refs[:0:0]
	for _, r := range refs {
		if r != ref {
			out = append(out, r)
		}
	}
	return out
}

// relocation is one disk that changes datastore.
type relocation struct {
	key      int32
	from, to string // datastore paths of the descriptor
	capacity int64
	ds       types.ManagedObjectReference
}

func (b *bed) relocateVM(w http.ResponseWriter, r *http.Request, body []byte, call *simulator.Method) {
	req := call.Body.(*types.RelocateVM_Task)
	b.mu.Lock()
	defer b.mu.Unlock()
	vm, ok := simulator.Map.Get(req.This).(*simulator.VirtualMachine)
	if !ok {
		b.next.ServeHTTP(w, withBody(r, body))
		return
	}
	moves, err := planMoves(vm, req.Spec)
	if err == nil {
		for _, m := range moves {
			if err = copyDisk(m); err != nil {
				break
			}
		}
	}
	if err != nil {
		failTaskFault(w, "RelocateVM_Task", req.This, &methodFault{msg: err.Error(), fault: &types.FileFault{}})
		return
	}
	rec := forward(b.next, r, body)
	if _, ok := succeededTask(rec); ok {
		simulator.Map.WithLock(vm, func() {
			for _, m := range moves {
				if disk, err := findDisk(vm, m.key); err == nil {
					if fb, err := flatBacking(disk); err == nil {
						fb.FileName, fb.Datastore = m.to, &m.ds
					}
				}
			}
		})
		syncDatastores(vm)
	}
	relay(w, rec)
}

// syncDatastores makes vm.datastore and each datastore's vm list name exactly the datastores
// holding the VM's home or one of its disks (vcsim leaves the old ones after a move).
func syncDatastores(vm *simulator.VirtualMachine) {
	used := map[string]bool{}
	var p object.DatastorePath
	simulator.Map.WithLock(vm, func() {
		if vm.Config.Files.VmPathName != "" && p.FromString(vm.Config.Files.VmPathName) {
			used[p.Datastore] = true
		}
		for _, disk := range disksOf(vm.Config.Hardware.Device) {
			if fb, err := flatBacking(disk); err == nil && p.FromString(fb.FileName) {
				used[p.Datastore] = true
			}
		}
	})
	var refs []types.ManagedObjectReference
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		has := false
		for _, ref := range ds.Vm {
			has = has || ref == vm.Self
		}
		switch {
		case used[ds.Name]:
			refs = append(refs, ds.Self)
			if !has {
				simulator.Map.AddReference(ds, &ds.Vm, vm.Self)
			}
		case has:
			simulator.Map.RemoveReference(ds, &ds.Vm, vm.Self)
		}
	}
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "datastore", Val: refs}})
}

func planMoves(vm *simulator.VirtualMachine, spec types.VirtualMachineRelocateSpec) ([]relocation, error) {
	target := map[int32]types.ManagedObjectReference{}
	for _, d := range spec.Disk {
		target[d.DiskId] = d.Datastore
	}
	var out []relocation
	for _, disk := range disksOf(vm.Config.Hardware.Device) {
		ref, ok := target[disk.Key]
		if !ok && spec.Datastore != nil {
			ref, ok = *spec.Datastore, true
		}
		fb, err := flatBacking(disk)
		if !ok || err != nil {
			continue
		}
		ds, isDs := simulator.Map.Get(ref).(*simulator.Datastore)
		if !isDs {
			return nil, fmt.Errorf("datastore %s not found", ref.Value)
		}
		var p object.DatastorePath
		p.FromString(fb.FileName)
		if p.Datastore == ds.Name {
			continue
		}
		to := object.DatastorePath{Datastore: ds.Name, Path: path.Join(vm.Name, path.Base(p.Path))}
		out = append(out, relocation{disk.Key, fb.FileName, to.String(), capacityOf(disk), ds.Self})
	}
	return out, nil
}

// copyDisk copies a disk's descriptor and -flat.vmdk to its new place (over NFS from a NAS
// datastore, else locally), thin.
func copyDisk(m relocation) error {
	for _, pair := range [][2]string{{m.from, m.to}, {flatName(m.from), flatName(m.to)}} {
		dst, err := localPath(pair[1])
		if err != nil {
			return err
		}
		if err = os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err = copyFile(pair[0], dst); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	var p object.DatastorePath
	p.FromString(src)
	nas.Lock()
	v, isNas := nas.volumes[p.Datastore]
	nas.Unlock()
	if isNas {
		entries, err := nfsList(v.url(path.Dir(p.Path), true))
		if err != nil {
			return err
		}
		e, ok := entries[path.Base(p.Path)]
		if !ok {
			return fmt.Errorf("%s: no such file on the export", src)
		}
		return nfsCopy(v.url(p.Path, false), dst, e.size)
	}
	local, err := localPath(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(local)
	if err != nil {
		return err
	}
	return sparseCopy(dst, local, st.Size())
}
