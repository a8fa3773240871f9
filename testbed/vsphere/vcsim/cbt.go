package main

// Changed Block Tracking, modelled on a ctk file: every guest write to a tracked disk is recorded
// with the generation it happened in; taking a snapshot closes the generation and stamps the
// snapshot's disk with a changeId "<ctk uuid>/<generation>". QueryChangedDiskAreas(changeId of
// snapshot k, snapshot s) answers the union of the writes of generations k..s-1: exactly what
// the guest wrote between the two snapshots, rounded outward to the tracking block size (so a
// superset, as the API allows, never a subset). This file is pure: no I/O, no vcsim.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

type extent struct {
	start, length int64
}

func (e extent) end() int64 { return e.start + e.length }

type trackedWrite struct {
	gen int
	ext extent
}

// tracker is the change tracking state of one disk, like its -ctk.vmdk file.
type tracker struct {
	uuid   [16]byte
	gen    int // number of snapshots taken since tracking (re)started
	writes []trackedWrite
}

func newTracker() *tracker {
	t := &tracker{}
	_, _ = rand.Read(t.uuid[:])
	t.uuid[0] = 0x52 // vSphere change ids start with "52 "
	return t
}

func (t *tracker) record(e extent) {
	if e.length > 0 {
		t.writes = append(t.writes, trackedWrite{gen: t.gen, ext: e})
	}
}

// closeGeneration is called when a snapshot is taken; it returns the snapshot's sequence.
func (t *tracker) closeGeneration() int {
	t.gen++
	return t.gen
}

// uuidText renders the uuid like vSphere: "52 6f f7 0a 11 22 33 44-55 66 77 88 99 aa 1a 84".
func (t *tracker) uuidText() string {
	parts := make([]string, 16)
	for i, b := range t.uuid {
		parts[i] = fmt.Sprintf("%02x", b)
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

func (t *tracker) changeID(seq int) string {
	return fmt.Sprintf("%s/%d", t.uuidText(), seq)
}

// sequenceOf returns the sequence of a changeId issued by this tracker, or false when the
// changeId is malformed, from another disk, or from before a reset (another uuid).
func (t *tracker) sequenceOf(changeID string) (int, bool) {
	i := strings.LastIndexByte(changeID, '/')
	if i < 0 || changeID[:i] != t.uuidText() {
		return 0, false
	}
	seq, err := strconv.Atoi(changeID[i+1:])
	if err != nil || seq < 1 || seq > t.gen {
		return 0, false
	}
	return seq, true
}

// changedSince returns the merged extents written in generations [from, to), rounded outward
// to block and clamped to capacity.
func (t *tracker) changedSince(from, to int, block, capacity int64) []extent {
	var out []extent
	for _, w := range t.writes {
		if w.gen >= from && w.gen < to {
			out = append(out, roundOut(w.ext, block, capacity))
		}
	}
	return mergeExtents(out)
}

func roundOut(e extent, block, capacity int64) extent {
	start := e.start / block * block
	end := (e.end() + block - 1) / block * block
	if end > capacity {
		end = capacity
	}
	return extent{start, end - start}
}

// mergeExtents sorts extents and joins overlapping or adjacent ones.
func mergeExtents(in []extent) []extent {
	sort.Slice(in, func(i, j int) bool { return in[i].start < in[j].start })
	var out []extent
	for _, e := range in {
		if e.length <= 0 {
			continue
		}
		if n := len(out); n > 0 && e.start <= out[n-1].end() {
			if e.end() > out[n-1].end() {
				out[n-1].length = e.end() - out[n-1].start
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

// clip returns the parts of sorted extents inside [start, end).
func clip(in []extent, start, end int64) []extent {
	var out []extent
	for _, e := range in {
		s, f := e.start, e.end()
		if s < start {
			s = start
		}
		if f > end {
			f = end
		}
		if s < f {
			out = append(out, extent{s, f - s})
		}
	}
	return out
}

// parseWriteLog reads a guest write log: one "offset length" pair of decimal byte counts per
// line (blank lines and lines starting with '#' are skipped). Every extent must lie inside
// [0, capacity) and have a positive length. The answer is sorted and merged.
func parseWriteLog(text []byte, capacity int64) ([]extent, error) {
	var out []extent
	lines := bufio.NewScanner(bytes.NewReader(text))
	for n := 1; lines.Scan(); n++ {
		line := strings.TrimSpace(lines.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("write log line %d: want \"offset length\", got %q", n, line)
		}
		start, err1 := strconv.ParseInt(fields[0], 10, 64)
		length, err2 := strconv.ParseInt(fields[1], 10, 64)
		if err1 != nil || err2 != nil || start < 0 || length <= 0 || start+length > capacity {
			return nil, fmt.Errorf("write log line %d: %q is not an extent inside the disk (capacity %d)",
				n, line, capacity)
		}
		out = append(out, extent{start, length})
	}
	if err := lines.Err(); err != nil {
		return nil, err
	}
	return mergeExtents(out), nil
}

// extentBytes is the total length of extents (callers pass merged extents: no overlaps).
func extentBytes(in []extent) int64 {
	var n int64
	for _, e := range in {
		n += e.length
	}
	return n
}

// trackedBytes is what QueryChangedDiskAreas answers for writes alone, in bytes: the extents
// rounded out to block, clamped to capacity and merged.
func trackedBytes(writes []extent, block, capacity int64) int64 {
	rounded := make([]extent, 0, len(writes))
	for _, e := range writes {
		rounded = append(rounded, roundOut(e, block, capacity))
	}
	return extentBytes(mergeExtents(rounded))
}
