package main

// Disk files on the simulated datastores: a VMware "vmfs" descriptor <disk>.vmdk next to the raw
// <disk>-flat.vmdk that holds the guest-visible bytes (what the /folder URL serves). Copies are
// sparse: all-zero blocks become holes, so frozen snapshot copies of mostly-empty disks are cheap.

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
)

const copyBlock = 1 << 20

// flatName maps "disk1.vmdk" (a descriptor name or datastore path) to "disk1-flat.vmdk".
func flatName(descriptor string) string {
	return strings.TrimSuffix(descriptor, ".vmdk") + "-flat.vmdk"
}

// writeDescriptor writes a single-extent vmfs descriptor for a flat file of capacity bytes.
// ddbUUID is the disk's backing uuid in vmdk notation ("60 00 c2 9a ...-...").
func writeDescriptor(path, flatBase string, capacity int64, ddbUUID string) error {
	sectors := capacity / 512
	heads, spt := int64(255), int64(63)
	switch {
	case capacity < 1<<30:
		heads, spt = 64, 32
	case capacity < 2<<30:
		heads, spt = 128, 32
	}
	text := fmt.Sprintf(`# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW %d VMFS "%s"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "%d"
ddb.geometry.heads = "%d"
ddb.geometry.sectors = "%d"
ddb.uuid = "%s"
ddb.virtualHWVersion = "13"
`, sectors, flatBase, sectors/(heads*spt), heads, spt, ddbUUID)
	return os.WriteFile(path, []byte(text), 0o644)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// sparseCopy copies size bytes of src into a new dst, leaving holes for all-zero blocks; src
// shorter than size reads as zeros (a grown disk).
func sparseCopy(dst, src string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	buf := make([]byte, copyBlock)
	for off := int64(0); off < size; off += copyBlock {
		n, err := in.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			out.Close()
			return err
		}
		if n > 0 && !isZero(buf[:n]) {
			if _, err = out.WriteAt(buf[:n], off); err != nil {
				out.Close()
				return err
			}
		}
	}
	if err = out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writeAt(path string, off int64, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err = f.WriteAt(data, off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// allocatedExtents lists the block-aligned areas of [from, to) in path that hold non-zero data:
// the answer to QueryChangedDiskAreas(changeId="*").
func allocatedExtents(path string, block, from, to int64) ([]extent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []extent
	buf := make([]byte, block)
	for off := from / block * block; off < to; off += block {
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			return nil, err
		}
		if n > 0 && !isZero(buf[:n]) {
			out = append(out, extent{off, int64(n)})
		}
	}
	return mergeExtents(out), nil
}

// diffBlocks returns the block-aligned extents where image differs from the first bytes of disk
// (the image is compared over its own length). Neighbouring blocks are merged.
func diffBlocks(diskPath, imagePath string, block int64) ([]extent, error) {
	disk, err := os.Open(diskPath)
	if err != nil {
		return nil, err
	}
	defer disk.Close()
	image, err := os.Open(imagePath)
	if err != nil {
		return nil, err
	}
	defer image.Close()
	a, b := make([]byte, block), make([]byte, block)
	var out []extent
	for off := int64(0); ; off += block {
		n, err := image.ReadAt(b, off)
		if n == 0 {
			if err != nil && err != io.EOF {
				return nil, err
			}
			return mergeExtents(out), nil
		}
		m, err := disk.ReadAt(a[:n], off)
		if err != nil && err != io.EOF {
			return nil, err
		}
		for i := m; i < n; i++ {
			a[i] = 0 // past the disk's end reads as zeros
		}
		if !bytes.Equal(a[:n], b[:n]) {
			out = append(out, extent{off, int64(n)})
		}
	}
}

// copyRange copies the bytes of e from src to dst (both files of at least e.end() bytes).
func copyRange(dst, src string, e extent) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	buf := make([]byte, e.length)
	if _, err = in.ReadAt(buf, e.start); err != nil && err != io.EOF {
		return err
	}
	return writeAt(dst, e.start, buf)
}
