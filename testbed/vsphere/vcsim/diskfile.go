package main

// Disk files on the simulated datastores: a VMware "vmfs" descriptor <disk>.vmdk next to the raw
// <disk>-flat.vmdk that holds the guest-visible bytes (what the /folder URL serves). Copies are
// sparse: all-zero blocks become holes. Frozen snapshot copies are hard links, copied on write.

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

const (
	copyChunk = 4 << 20 // bytes per read in copies and scans
	// holeBlock is the granularity of holes in sparse copies: like VMFS's 1 MiB file blocks.
	// The file transport sees holes (SEEK_DATA), so finer holes would change what it reads.
	holeBlock = 1 << 20
)

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

// zeroBlock is compared against (bytes.Equal is memcmp, not a byte loop); never written.
var zeroBlock = make([]byte, zeroCheck)

const zeroCheck = 64 << 10

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := len(b)
		if n > zeroCheck {
			n = zeroCheck
		}
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// lseek whence values of Linux (golang.org/x/sys is not available offline).
const (
	seekData = 3
	seekHole = 4
)

// dataExtents lists the areas of [from, to) that are not holes in f, using SEEK_DATA and
// SEEK_HOLE: holes read as zeros and need not be read. Areas past the end of f are holes. A
// file system without SEEK_DATA support reports everything up to the end as data.
func dataExtents(f *os.File, from, to int64) ([]extent, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if to > st.Size() {
		to = st.Size()
	}
	fd := int(f.Fd())
	var out []extent
	for off := from; off < to; {
		start, err := syscall.Seek(fd, off, seekData)
		if err == syscall.ENXIO { // only a hole up to the end of the file
			break
		}
		if err == syscall.EINVAL || err == syscall.EOPNOTSUPP {
			return append(out, extent{off, to - off}), nil
		}
		if err != nil {
			return nil, fmt.Errorf("seek data in %s: %v", f.Name(), err)
		}
		if start >= to {
			break
		}
		end, err := syscall.Seek(fd, start, seekHole)
		if err == syscall.ENXIO { // the file shrank meanwhile
			end = to
		} else if err != nil {
			return nil, fmt.Errorf("seek hole in %s: %v", f.Name(), err)
		}
		if end > to {
			end = to
		}
		out = append(out, extent{start, end - start})
		off = end
	}
	return out, nil
}

// blockAligned rounds every extent outward to block (clamped to limit) and merges them.
func blockAligned(in []extent, block, limit int64) []extent {
	out := make([]extent, 0, len(in))
	for _, e := range in {
		out = append(out, roundOut(e, block, limit))
	}
	return mergeExtents(out)
}

// chunkFor is the read size for scans in units of block: about copyChunk, a multiple of block.
func chunkFor(block int64) int64 {
	if block >= copyChunk {
		return block
	}
	return copyChunk / block * block
}

// sparseCopy copies size bytes of src into a new dst, leaving holes for all-zero 1 MiB blocks;
// src shorter than size reads as zeros (a grown disk). Only the data extents of src are read.
// dst gets a new inode (written under a temporary name, then renamed over dst), so a frozen
// snapshot sharing dst's old inode keeps its bytes.
func sparseCopy(dst, src string, size int64) error {
	tmp := dst + ".tmp"
	if err := sparseCopyTo(tmp, src, size); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

func sparseCopyTo(dst, src string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	data, err := dataExtents(in, 0, size)
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err = out.Truncate(size); err != nil { // all hole; only data is written below
		out.Close()
		return err
	}
	buf := make([]byte, copyChunk)
	for _, e := range blockAligned(data, holeBlock, size) {
		for off := e.start; off < e.end(); off += copyChunk {
			n := e.end() - off
			if n > copyChunk {
				n = copyChunk
			}
			m, err := in.ReadAt(buf[:n], off)
			if err != nil && err != io.EOF {
				out.Close()
				return err
			}
			if err = writeNonZero(out, buf[:m], off); err != nil {
				out.Close()
				return err
			}
		}
	}
	return out.Close()
}

// writeNonZero writes the runs of p (which belongs at off, a multiple of holeBlock) that are
// not all-zero holeBlock blocks.
func writeNonZero(out *os.File, p []byte, off int64) error {
	runStart := -1
	flush := func(end int) error {
		if runStart < 0 {
			return nil
		}
		_, err := out.WriteAt(p[runStart:end], off+int64(runStart))
		runStart = -1
		return err
	}
	for i := 0; i < len(p); i += holeBlock {
		j := i + holeBlock
		if j > len(p) {
			j = len(p)
		}
		if isZero(p[i:j]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if runStart < 0 {
			runStart = i
		}
	}
	return flush(len(p))
}

// Copy-on-write snapshots: a frozen flat file is a hard link to the disk's flat file (same
// inode, so the same bytes and hole layout, made instantly). Whatever modifies a VM's disk
// first calls unshare, which gives the disk a private copy while a snapshot still shares it.

// freezeLink makes dst a frozen copy of size bytes of src: a hard link when src is exactly
// size bytes long, else (or where links fail) a sparse copy.
func freezeLink(dst, src string, size int64) error {
	if st, err := os.Stat(src); err == nil && st.Size() == size {
		_ = os.Remove(dst)
		if os.Link(src, dst) == nil {
			return nil
		}
	}
	return sparseCopy(dst, src, size)
}

// linkOver replaces path by another name of src's inode (a revert: src is a frozen copy).
func linkOver(path, src string) error {
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// unshare breaks the sharing of path's inode with frozen copies before path is modified: its
// data extents are copied as they are (same bytes, same holes) to a new inode under a
// temporary name that then replaces path; the frozen names keep the old inode. A file with a
// single name is left alone.
func unshare(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || sys.Nlink <= 1 {
		return nil
	}
	tmp := path + ".tmp"
	if err = exactCopy(tmp, path, st.Size()); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// exactCopy copies src (size bytes) to a new dst with the same data extents and holes.
func exactCopy(dst, src string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	data, err := dataExtents(in, 0, size)
	in.Close()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err = out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	if err = out.Close(); err != nil {
		return err
	}
	return copyExtents(dst, src, data)
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
// the answer to QueryChangedDiskAreas(changeId="*"). Holes are skipped without reading. With
// limit > 0 the scan stops at the start of the (limit+1)-th extent: it returns the first limit
// extents, all complete, and more = true.
func allocatedExtents(path string, block, from, to int64, limit int) (out []extent, more bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	from = from / block * block
	to = (to + block - 1) / block * block // whole blocks, as callers clip; reads stop at EOF
	data, err := dataExtents(f, from, to)
	if err != nil {
		return nil, false, err
	}
	chunk := chunkFor(block)
	buf := make([]byte, chunk)
	for _, d := range blockAligned(data, block, to) {
		for off := d.start; off < d.end(); off += chunk {
			n := d.end() - off
			if n > chunk {
				n = chunk
			}
			m, err := f.ReadAt(buf[:n], off)
			if err != nil && err != io.EOF {
				return nil, false, err
			}
			for i := 0; i < m; i += int(block) {
				j := i + int(block)
				if j > m {
					j = m
				}
				if isZero(buf[i:j]) {
					continue
				}
				e := extent{off + int64(i), int64(j - i)}
				if k := len(out); k > 0 && out[k-1].end() == e.start {
					out[k-1].length += e.length
					continue
				}
				if limit > 0 && len(out) == limit {
					return out, true, nil
				}
				out = append(out, e)
			}
		}
	}
	return out, false, nil
}

// diffBlocks returns the block-aligned extents where image differs from the first bytes of disk
// (the image is compared over its own length; past the disk's end the disk reads as zeros).
// Neighbouring blocks are merged. Areas that are holes in both files are equal and not read;
// the rest is compared in large chunks, block by block only where a chunk differs.
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
	st, err := image.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	inImage, err := dataExtents(image, 0, size)
	if err != nil {
		return nil, err
	}
	inDisk, err := dataExtents(disk, 0, size)
	if err != nil {
		return nil, err
	}
	chunk := chunkFor(block)
	a, b := make([]byte, chunk), make([]byte, chunk)
	var out []extent
	for _, r := range blockAligned(append(inImage, inDisk...), block, size) {
		for off := r.start; off < r.end(); off += chunk {
			n := r.end() - off
			if n > chunk {
				n = chunk
			}
			if _, err := image.ReadAt(b[:n], off); err != nil && err != io.EOF {
				return nil, err
			}
			m, err := disk.ReadAt(a[:n], off)
			if err != nil && err != io.EOF {
				return nil, err
			}
			for i := int64(m); i < n; i++ {
				a[i] = 0 // past the disk's end reads as zeros
			}
			if bytes.Equal(a[:n], b[:n]) {
				continue
			}
			for i := int64(0); i < n; i += block {
				j := i + block
				if j > n {
					j = n
				}
				if !bytes.Equal(a[i:j], b[i:j]) {
					out = append(out, extent{off + i, j - i})
				}
			}
		}
	}
	return mergeExtents(out), nil
}

// copyExtents copies the bytes of every extent from src to dst (both files of at least the
// extents' end), opening each file once.
func copyExtents(dst, src string, extents []extent) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, copyChunk)
	for _, e := range extents {
		for off := e.start; off < e.end(); off += copyChunk {
			n := e.end() - off
			if n > copyChunk {
				n = copyChunk
			}
			if _, err = in.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				out.Close()
				return err
			}
			if _, err = out.WriteAt(buf[:n], off); err != nil {
				out.Close()
				return err
			}
		}
	}
	return out.Close()
}
