package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// stream builds a QEMU 7.2 migration stream as a VM with a private "ram"
// block of ramPages pages and a 2-page ROM writes it (withRAM), or as
// the same VM with "ram" shared writes it under x-ignore-shared (no page
// of "ram"): the splitter must turn the first into the second. ram[-1-i]
// sends page i again after the others, as a zero-page record of its
// first byte (a page dirtied again between precopy passes).
type stream struct {
	bytes.Buffer
}

func (s *stream) u32(v uint32) { s.Write(binary.BigEndian.AppendUint32(nil, v)) }
func (s *stream) u64(v uint64) { s.Write(binary.BigEndian.AppendUint64(nil, v)) }
func (s *stream) str(v string) { s.WriteByte(byte(len(v))); s.WriteString(v) }

func fill(b byte) []byte { return bytes.Repeat([]byte{b}, pageSize) }

func buildStream(ramPages int, ram map[int][]byte, withRAM bool, caps ...string) []byte {
	var s stream
	s.u32(qemuVMFileMagic)
	s.u32(qemuVMFileVersion)
	s.WriteByte(secConfiguration)
	s.u32(7)
	s.WriteString("microvm")
	s.WriteByte(secSubsection)
	s.str("configuration/capabilities")
	s.u32(1)
	s.u32(uint32(len(caps)))
	for _, c := range caps {
		s.str(c)
	}
	// START: the block list.
	s.WriteByte(secStart)
	s.u32(2)
	s.str("ram")
	s.u32(0)
	s.u32(4)
	s.u64(uint64(ramPages*pageSize+2*pageSize) | ramFlagMemSize)
	s.str("ram")
	s.u64(uint64(ramPages * pageSize))
	s.u64(0)
	s.str("pc.bios")
	s.u64(2 * pageSize)
	s.u64(0xffff0000)
	s.u64(ramFlagEOS)
	s.WriteByte(secFooter)
	s.u32(2)
	// PART: ROM page 0, then every page of ram (interleaved with ROM
	// page 1 half way), the ROM's records naming their block as QEMU
	// does (CONTINUE after the first).
	s.WriteByte(secPart)
	s.u32(2)
	s.u64(0 | ramFlagPage)
	s.str("pc.bios")
	s.Write(fill(0xb1))
	last := "pc.bios"
	for i := 0; i < ramPages; i++ {
		if i == ramPages/2 {
			if last == "pc.bios" {
				s.u64(pageSize | ramFlagZero | ramFlagContinue)
			} else {
				s.u64(pageSize | ramFlagZero)
				s.str("pc.bios")
			}
			s.WriteByte(0)
			last = "pc.bios"
		}
		if !withRAM {
			continue
		}
		flags := uint64(ramFlagZero)
		if ram[i] != nil {
			flags = ramFlagPage
		}
		if last == "ram" {
			s.u64(uint64(i*pageSize) | flags | ramFlagContinue)
		} else {
			s.u64(uint64(i*pageSize) | flags)
			s.str("ram")
		}
		last = "ram"
		if ram[i] != nil {
			s.Write(ram[i])
		} else {
			s.WriteByte(0)
		}
	}
	for i := 0; withRAM && i < ramPages; i++ {
		if p, ok := ram[-1-i]; ok {
			s.u64(uint64(i*pageSize) | ramFlagZero | ramFlagContinue)
			s.WriteByte(p[0])
		}
	}
	s.u64(ramFlagEOS)
	s.WriteByte(secFooter)
	s.u32(2)
	// END: nothing left.
	s.WriteByte(secEnd)
	s.u32(2)
	s.u64(ramFlagEOS)
	s.WriteByte(secFooter)
	s.u32(2)
	// A device's FULL section and EOF: copied as they are.
	s.WriteByte(0x04)
	s.u32(3)
	s.str("timer")
	s.u32(0)
	s.u32(2)
	s.Write([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9})
	s.WriteByte(secFooter)
	s.u32(3)
	s.WriteByte(0x00)
	return s.Bytes()
}

// TestSplitRAM splits the stream of a VM with private RAM: the device
// state left is byte for byte the stream of the same VM with shared RAM
// under x-ignore-shared (the ROM's records naming their block again
// where the RAM pages between them were taken out), and the memory file
// holds every page, zero pages as holes.
func TestSplitRAM(t *testing.T) {
	const pages = 64
	ram := map[int][]byte{0: fill(0x11), 1: fill(0x22), 2: fill(0x33), 17: fill(0x44), 63: fill(0x55)}
	in := buildStream(pages, ram, true, "x-ignore-shared")
	want := buildStream(pages, nil, false, "x-ignore-shared")

	dir := t.TempDir()
	mem, err := os.Create(filepath.Join(dir, "memory"))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	var state bytes.Buffer
	if err := splitRAM(bytes.NewReader(in), &state, mem, "ram"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(state.Bytes(), want) {
		t.Errorf("device state differs from an x-ignore-shared stream:\n got %x\nwant %x", state.Bytes(), want)
	}
	got, _ := os.ReadFile(mem.Name())
	if len(got) != pages*pageSize {
		t.Fatalf("memory file is %d bytes, want %d", len(got), pages*pageSize)
	}
	for i := 0; i < pages; i++ {
		page := got[i*pageSize : (i+1)*pageSize]
		wantPage := ram[i]
		if wantPage == nil {
			wantPage = make([]byte, pageSize)
		}
		if !bytes.Equal(page, wantPage) {
			t.Errorf("page %d = %x…, want %x…", i, page[:4], wantPage[:4])
		}
	}
	// Zero pages are holes: the file holds the five written pages only.
	fi, _ := mem.Stat()
	if blocks := fileBlocks(fi); blocks > 5*pageSize+pageSize {
		t.Errorf("memory file allocates %d bytes: zero pages were written", blocks)
	}
}

// TestSplitRAMPageSentAgain: a page sent with data and then again as a
// zero page ends zero in the memory file (not the stale data), and one
// sent again as another fill byte holds that byte.
func TestSplitRAMPageSentAgain(t *testing.T) {
	const pages = 8
	ram := map[int][]byte{1: fill(0x22), -2: fill(0), 3: fill(0x33), -4: fill(0x77)}
	mem, err := os.Create(filepath.Join(t.TempDir(), "memory"))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	var state bytes.Buffer
	if err := splitRAM(bytes.NewReader(buildStream(pages, ram, true, "x-ignore-shared")), &state, mem, "ram"); err != nil {
		t.Fatal(err)
	}
	if want := buildStream(pages, nil, false, "x-ignore-shared"); !bytes.Equal(state.Bytes(), want) {
		t.Errorf("device state differs from an x-ignore-shared stream")
	}
	got, _ := os.ReadFile(mem.Name())
	for i, want := range map[int][]byte{1: fill(0), 3: fill(0x77)} {
		if page := got[i*pageSize : (i+1)*pageSize]; !bytes.Equal(page, want) {
			t.Errorf("page %d = %x…, want %x…", i, page[:4], want[:4])
		}
	}
}

func TestSplitRAMRefusesUnknown(t *testing.T) {
	good := buildStream(4, map[int][]byte{1: fill(1)}, true, "x-ignore-shared")
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"not a stream", []byte("hello world, this is no stream")},
		{"without x-ignore-shared", buildStream(4, map[int][]byte{1: fill(1)}, true)},
		{"cut in a page", good[:len(good)/2]},
		{"no RAM block", bytes.Replace(good, []byte("\x03ram"), []byte("\x03rom"), -1)},
		{"compressed page", bytes.Replace(good, binary.BigEndian.AppendUint64(nil, pageSize|ramFlagPage|ramFlagContinue), binary.BigEndian.AppendUint64(nil, pageSize|0x100|ramFlagContinue), 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, _ := os.Create(filepath.Join(t.TempDir(), "memory"))
			defer mem.Close()
			err := splitRAM(bytes.NewReader(tc.in), &bytes.Buffer{}, mem, "ram")
			if !errors.Is(err, ErrStream) {
				t.Errorf("err = %v, want ErrStream", err)
			}
		})
	}
}

func fileBlocks(fi os.FileInfo) int64 {
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}
