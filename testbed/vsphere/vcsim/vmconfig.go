package main

// GET /vmaccel-test/vm-config?vm=NAME: a VM's configuration as the bed holds it, in plain JSON,
// so tests can compare a restored VM with its source without walking pyVmomi objects.
// Capacities are bytes; "type" is the vim type name without its package ("VirtualDisk",
// "ParaVirtualSCSIController", "VirtualVmxnet3").

import (
	"fmt"
	"net/http"
	"reflect"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	register(extension{
		name: "vm config",
		routes: func(b *bed) map[string]controlFunc {
			return map[string]controlFunc{"GET vm-config": b.vmConfig}
		},
	})
}

type deviceConfig struct {
	Type          string `json:"type"`
	Key           int32  `json:"key"`
	ControllerKey int32  `json:"controller_key"`
	UnitNumber    *int32 `json:"unit_number"`
	Label         string `json:"label"`
	Capacity      int64  `json:"capacity,omitempty"`     // disks, bytes
	FileName      string `json:"file_name,omitempty"`    // file backings (disks, ISOs)
	Path          string `json:"path,omitempty"`         // disks: the local -flat.vmdk
	UUID          string `json:"uuid,omitempty"`         // disks: backing uuid
	Thin          *bool  `json:"thin,omitempty"`         // disks
	DiskMode      string `json:"disk_mode,omitempty"`    // disks
	Network       string `json:"network,omitempty"`      // NICs: network name
	MacAddress    string `json:"mac_address,omitempty"`  // NICs
	AddressType   string `json:"address_type,omitempty"` // NICs: "generated", "manual", "assigned"
	BusNumber     *int32 `json:"bus_number,omitempty"`   // controllers
	SharedBus     string `json:"shared_bus,omitempty"`   // SCSI controllers
}

type vmConfigInfo struct {
	Name                  string            `json:"name"`
	Moref                 string            `json:"moref"`
	PowerState            string            `json:"power_state"`
	UUID                  string            `json:"uuid"`
	InstanceUUID          string            `json:"instance_uuid"`
	GuestID               string            `json:"guest_id"`
	Version               string            `json:"version"`
	Firmware              string            `json:"firmware"`
	NumCPU                int32             `json:"num_cpu"`
	NumCoresPerSocket     int32             `json:"num_cores_per_socket"`
	MemoryMB              int32             `json:"memory_mb"`
	ChangeTrackingEnabled bool              `json:"change_tracking_enabled"`
	VMPathName            string            `json:"vm_path_name"`
	Datastores            []string          `json:"datastores"`
	ExtraConfig           map[string]string `json:"extra_config"`
	Devices               []deviceConfig    `json:"devices"`
}

func (b *bed) vmConfig(r *http.Request, _ controlRequest) (interface{}, error) {
	vm, err := findVM(r.URL.Query().Get("vm"))
	if err != nil {
		return nil, err
	}
	var out vmConfigInfo
	simulator.Map.WithLock(vm, func() { out = describeVM(vm) })
	return out, nil
}

func describeVM(vm *simulator.VirtualMachine) vmConfigInfo {
	c := vm.Config
	out := vmConfigInfo{
		Name: vm.Name, Moref: vm.Self.Value, PowerState: string(vm.Runtime.PowerState),
		UUID: c.Uuid, InstanceUUID: c.InstanceUuid, GuestID: c.GuestId, Version: c.Version,
		Firmware: c.Firmware, NumCPU: c.Hardware.NumCPU, NumCoresPerSocket: c.Hardware.NumCoresPerSocket,
		MemoryMB: c.Hardware.MemoryMB, ChangeTrackingEnabled: trackingEnabled(vm),
		VMPathName: c.Files.VmPathName, ExtraConfig: map[string]string{}, Devices: []deviceConfig{},
		Datastores: []string{},
	}
	for _, ref := range vm.Datastore {
		if ds, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok {
			out.Datastores = append(out.Datastores, ds.Name)
		}
	}
	for _, o := range c.ExtraConfig {
		v := o.GetOptionValue()
		out.ExtraConfig[v.Key] = fmt.Sprint(v.Value)
	}
	for _, d := range c.Hardware.Device {
		out.Devices = append(out.Devices, describeDevice(d))
	}
	return out
}

func describeDevice(d types.BaseVirtualDevice) deviceConfig {
	v := d.GetVirtualDevice()
	out := deviceConfig{Type: reflect.TypeOf(d).Elem().Name(), Key: v.Key, ControllerKey: v.ControllerKey,
		UnitNumber: v.UnitNumber}
	if v.DeviceInfo != nil {
		out.Label = v.DeviceInfo.GetDescription().Label
	}
	if fb, ok := v.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
		out.FileName = fb.GetVirtualDeviceFileBackingInfo().FileName
	}
	switch x := d.(type) {
	case *types.VirtualDisk:
		out.Capacity = capacityOf(x)
		if fb, err := flatBacking(x); err == nil {
			out.UUID, out.Thin, out.DiskMode = fb.Uuid, fb.ThinProvisioned, fb.DiskMode
			if p, err := localFlat(fb.FileName); err == nil {
				out.Path = p
			}
		}
	case types.BaseVirtualEthernetCard:
		nic := x.GetVirtualEthernetCard()
		out.MacAddress, out.AddressType = nic.MacAddress, nic.AddressType
		if nb, ok := nic.Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok {
			out.Network = nb.DeviceName
		}
	case types.BaseVirtualController:
		bus := x.GetVirtualController().BusNumber
		out.BusNumber = &bus
		if scsi, ok := d.(types.BaseVirtualSCSIController); ok {
			out.SharedBus = string(scsi.GetVirtualSCSIController().SharedBus)
		}
	}
	return out
}
