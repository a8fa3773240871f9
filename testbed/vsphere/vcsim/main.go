// Command vcsim-bed runs govmomi's vCenter simulator (VPX model) behind the vmaccel test layer.
//
// The test layer (see bed.go) sits in front of vcsim's HTTP handler and adds what a backup
// product needs but vcsim 0.24 lacks: real disk contents, frozen snapshot disks, Changed Block
// Tracking (QueryChangedDiskAreas), fault injection, a control API for tests and the vAPI
// JSON-RPC endpoint used by the vmware-vcenter bindings; and, for restores, VMs created with
// real disks (vmlife.go), /folder and NFC uploads stored as real files (upload.go, nfc.go).
// Feature files plug in through extensions.go.
//
// On start it prints one JSON line (see readyLine) on stdout; it exits on SIGINT/SIGTERM or,
// with -exit-on-stdin-eof, when its parent closes stdin (so a killed test run leaks nothing).
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"io/ioutil"
	"log"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator" // registers the /rest (tagging) endpoints
)

// readyLine is the first line written to stdout once the server accepts connections.
type readyLine struct {
	URL        string            `json:"url"`
	User       string            `json:"user"`
	Password   string            `json:"password"`
	CertFile   string            `json:"cert_file"`
	Datastores map[string]string `json:"datastores"`
}

type options struct {
	listen    string
	stateDir  string
	window    int64
	maxExt    int
	ctkBlock  int64
	exitOnEOF bool
	machines  int
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "address to listen on")
	flag.StringVar(&o.stateDir, "state-dir", "", "directory for the TLS key and certificate (default: a temp dir)")
	flag.Int64Var(&o.window, "qcda-window", 4<<20, "bytes covered by one QueryChangedDiskAreas answer")
	flag.IntVar(&o.maxExt, "qcda-max-extents", 0,
		"changed extents in one QueryChangedDiskAreas answer, at most (0: bounded by -qcda-window only)")
	flag.Int64Var(&o.ctkBlock, "ctk-block", 64<<10, "change tracking granularity in bytes")
	flag.IntVar(&o.machines, "machines", 4, "VMs per host and per cluster (the VPX model has one of each)")
	flag.BoolVar(&o.exitOnEOF, "exit-on-stdin-eof", false, "exit when stdin is closed")
	flag.Parse()
	return o
}

func main() {
	o := parseFlags()
	if o.window <= 0 || o.maxExt < 0 || o.ctkBlock <= 0 || o.ctkBlock%512 != 0 {
		log.Fatal("-qcda-window must be > 0, -qcda-max-extents >= 0 and -ctk-block a positive multiple of 512")
	}
	if o.stateDir == "" {
		dir, err := ioutil.TempDir("", "vcsim-bed-")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(dir)
		o.stateDir = dir
	}
	certFile, tlsConfig, err := newTLS(o.stateDir)
	if err != nil {
		log.Fatalf("tls: %v", err)
	}

	model := simulator.VPX()
	model.Machine = o.machines
	if err = model.Create(); err != nil {
		log.Fatalf("model: %v", err)
	}
	defer model.Remove()
	model.Service.RegisterEndpoints = true
	model.Service.TLS = tlsConfig
	// Own credentials instead of vcsim's default user/pass, which accepts any non-empty
	// password: a wrong password must fail as it does on vCenter.
	model.Service.Listen = &url.URL{Host: o.listen, User: url.UserPassword("vmaccel", randomSecret())}

	server := model.Service.NewServer()
	defer server.Close()
	b := newBed(model.Service, server.Config.Handler, o.window, o.ctkBlock, o.maxExt)
	server.Config.Handler = b

	announce(server, certFile)
	waitForExit(o.exitOnEOF)
}

func announce(server *simulator.Server, certFile string) {
	u := *server.URL
	password, _ := u.User.Password()
	ready := readyLine{
		URL:        (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String(),
		User:       u.User.Username(),
		Password:   password,
		CertFile:   certFile,
		Datastores: datastoreDirs(),
	}
	if err := json.NewEncoder(os.Stdout).Encode(ready); err != nil {
		log.Fatal(err)
	}
}

func waitForExit(exitOnEOF bool) {
	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGINT, syscall.SIGTERM)
	if exitOnEOF {
		go func() {
			_, _ = io.Copy(ioutil.Discard, os.Stdin)
			done <- syscall.SIGTERM
		}()
	}
	<-done
}

// datastoreDirs maps each datastore name to its directory on the local disk.
func datastoreDirs() map[string]string {
	dirs := map[string]string{}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		dirs[ds.Name] = filepath.Clean(ds.Info.GetDatastoreInfo().Url)
	}
	return dirs
}

func randomSecret() string {
	buf := make([]byte, 12)
	if _, err := rand.Read(buf); err != nil {
		log.Fatalf("random password: %v", err)
	}
	return hex.EncodeToString(buf)
}
