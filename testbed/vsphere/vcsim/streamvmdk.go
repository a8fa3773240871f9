package main

// A decoder for streamOptimized VMDK, the format NFC imports (ImportVApp / HttpNfcLease)
// upload: one sparse extent whose grains are deflate-compressed and each preceded by a marker
// with its LBA, so the stream can be read front to back without seeking.
//
// Layout (all integers little-endian; sectors are 512 bytes):
//
//	header (1 sector): magic "KDMV", version, flags (bit 16: compressed grains, bit 17:
//	  markers), capacity (sectors), grainSize (sectors), descriptor offset/size, numGTEsPerGT,
//	  rgdOffset, gdOffset (-1 in a stream: the grain directory follows at the end), overHead
//	  (sectors before the first marker), ..., compressAlgorithm (1 = deflate) at byte 77.
//	then, from sector overHead on, a sequence of markers, each starting on a sector boundary:
//	  grain:    lba uint64, size uint32 (> 0), then size bytes of zlib data; padded to a sector.
//	            The data inflates to at most grainSize sectors, which belong at sector lba.
//	  metadata: numSectors uint64, size uint32 (= 0), type uint32 (0 end of stream, 1 grain
//	            table, 2 grain directory, 3 footer), padded to a sector; numSectors sectors of
//	            metadata follow (tables, or the footer's copy of the header).
//
// Sectors no grain covers read as zeros (holes). The decoder ignores the tables: the markers
// alone place every grain.

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
)

const (
	sectorSize       = 512
	sparseMagic      = 0x564d444b // "KDMV"
	flagCompressed   = 1 << 16
	flagMarkers      = 1 << 17
	markerEOS        = 0
	maxGrainSectors  = 1 << 11 // 1 MiB grains at most (VMware uses 128 sectors)
	maxCompressedLen = 4 << 20
)

// streamHeader is what the decoder needs from the sparse header.
type streamHeader struct {
	capacity  int64 // bytes
	grainSize int64 // bytes
	overHead  int64 // bytes before the first marker
}

func parseStreamHeader(h []byte) (streamHeader, error) {
	le := binary.LittleEndian
	if le.Uint32(h[0:]) != sparseMagic {
		return streamHeader{}, fmt.Errorf("not a sparse VMDK (no KDMV magic)")
	}
	flags := le.Uint32(h[8:])
	if flags&flagCompressed == 0 || flags&flagMarkers == 0 || le.Uint16(h[77:]) != 1 {
		return streamHeader{}, fmt.Errorf("not a streamOptimized VMDK (flags %#x, compression %d)",
			flags, le.Uint16(h[77:]))
	}
	hdr := streamHeader{
		capacity:  int64(le.Uint64(h[12:])) * sectorSize,
		grainSize: int64(le.Uint64(h[20:])) * sectorSize,
		overHead:  int64(le.Uint64(h[64:])) * sectorSize,
	}
	if hdr.grainSize <= 0 || hdr.grainSize > maxGrainSectors*sectorSize || hdr.overHead < sectorSize {
		return streamHeader{}, fmt.Errorf("bad sparse header: grain %d bytes, overhead %d bytes",
			hdr.grainSize, hdr.overHead)
	}
	return hdr, nil
}

// extentWriter receives decoded data at byte offsets.
type extentWriter interface {
	WriteAt(p []byte, off int64) error
}

// decodeStreamOptimized reads a whole streamOptimized VMDK from r and writes every grain's
// data to out at its offset. limit is the largest capacity accepted (bytes). Returns the
// disk's capacity from the header.
func decodeStreamOptimized(r io.Reader, limit int64, out extentWriter) (int64, error) {
	head := make([]byte, sectorSize)
	if _, err := io.ReadFull(r, head); err != nil {
		return 0, fmt.Errorf("reading the sparse header: %v", err)
	}
	hdr, err := parseStreamHeader(head)
	if err != nil {
		return 0, err
	}
	if hdr.capacity > limit {
		return 0, fmt.Errorf("the stream's disk (%d bytes) is larger than the target disk (%d bytes)",
			hdr.capacity, limit)
	}
	if _, err = io.CopyN(io.Discard, r, hdr.overHead-sectorSize); err != nil {
		return 0, fmt.Errorf("reading the descriptor: %v", err)
	}
	d := grainDecoder{hdr: hdr, out: out, grain: make([]byte, hdr.grainSize)}
	for {
		done, err := d.next(r)
		if err != nil {
			return 0, err
		}
		if done {
			_, _ = io.Copy(io.Discard, r) // anything after the end-of-stream marker
			return hdr.capacity, nil
		}
	}
}

type grainDecoder struct {
	hdr        streamHeader
	out        extentWriter
	grain      []byte
	compressed []byte
	inflater   io.ReadCloser
}

// next decodes one marker and what follows it; done is true at the end-of-stream marker.
func (d *grainDecoder) next(r io.Reader) (done bool, err error) {
	var m [12]byte
	if _, err = io.ReadFull(r, m[:]); err != nil {
		return false, fmt.Errorf("reading a marker: %v (the stream ends without an end-of-stream marker)", err)
	}
	val, size := binary.LittleEndian.Uint64(m[0:]), binary.LittleEndian.Uint32(m[8:])
	if size == 0 {
		return d.metadata(r, val)
	}
	if size > maxCompressedLen {
		return false, fmt.Errorf("grain at sector %d: %d compressed bytes is implausible", val, size)
	}
	if cap(d.compressed) < int(size) {
		d.compressed = make([]byte, size)
	}
	buf := d.compressed[:size]
	if _, err = io.ReadFull(r, buf); err != nil {
		return false, fmt.Errorf("grain at sector %d: %v", val, err)
	}
	if err = skipPadding(r, 12+int64(size)); err != nil {
		return false, err
	}
	return false, d.writeGrain(int64(val)*sectorSize, buf)
}

func (d *grainDecoder) metadata(r io.Reader, sectors uint64) (bool, error) {
	var rest [sectorSize - 12]byte
	if _, err := io.ReadFull(r, rest[:]); err != nil {
		return false, fmt.Errorf("reading a metadata marker: %v", err)
	}
	if binary.LittleEndian.Uint32(rest[0:]) == markerEOS {
		return true, nil
	}
	if sectors > uint64(d.hdr.capacity) { // tables are far smaller than the disk
		return false, fmt.Errorf("metadata marker of %d sectors is implausible", sectors)
	}
	if _, err := io.CopyN(io.Discard, r, int64(sectors)*sectorSize); err != nil {
		return false, fmt.Errorf("reading metadata: %v", err)
	}
	return false, nil
}

// writeGrain inflates one grain and writes it at off (bytes), clipped to the capacity.
func (d *grainDecoder) writeGrain(off int64, compressed []byte) error {
	var err error
	if d.inflater == nil {
		d.inflater, err = zlib.NewReader(bytes.NewReader(compressed))
	} else {
		err = d.inflater.(zlib.Resetter).Reset(bytes.NewReader(compressed), nil)
	}
	if err != nil {
		return fmt.Errorf("grain at byte %d: %v", off, err)
	}
	n, err := io.ReadFull(d.inflater, d.grain)
	if err != nil && err != io.ErrUnexpectedEOF {
		return fmt.Errorf("grain at byte %d: %v", off, err)
	}
	if off < 0 || off+int64(n) > d.hdr.capacity {
		if off >= d.hdr.capacity || off < 0 {
			return fmt.Errorf("grain at byte %d lies outside the disk (%d bytes)", off, d.hdr.capacity)
		}
		n = int(d.hdr.capacity - off)
	}
	if isZero(d.grain[:n]) {
		return nil
	}
	return d.out.WriteAt(d.grain[:n], off)
}

// skipPadding discards the bytes that pad a marker of used bytes to a whole sector.
func skipPadding(r io.Reader, used int64) error {
	if pad := (sectorSize - used%sectorSize) % sectorSize; pad > 0 {
		if _, err := io.CopyN(io.Discard, r, pad); err != nil {
			return fmt.Errorf("reading grain padding: %v", err)
		}
	}
	return nil
}
