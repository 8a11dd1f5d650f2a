package qemu

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// This file splits the migration stream of a VM whose RAM is not a
// shared file (a restored VM maps its snapshot's file copy-on-write)
// into the two files every banger snapshot is made of: the guest's RAM
// as a sparse memory file, and a device-state stream that carries no
// page of it, exactly as x-ignore-shared writes one for a VM whose RAM
// is a shared file. Snapshots of restored VMs are then restored like
// any other, copy-on-write from their memory file.
//
// QEMU 7.2 ignores only shared RAM blocks under x-ignore-shared, so it
// streams every page of a private one. The stream's layout is QEMU's
// (migration/savevm.c and migration/ram.c, precopy, no compression,
// multifd or XBZRLE): a header, the configuration, the "ram" section's
// START, PART and END sections, each a run of page records ending in
// EOS, then the devices' FULL sections and EOF. Only the ram sections
// are rewritten; the first byte after them starts what is copied as is.
// Anything else the splitter does not know fails the snapshot (the
// VMM's version is pinned by every snapshot: a new QEMU is met in the
// tests first).

// Migration stream constants of QEMU 7.2.
const (
	qemuVMFileMagic   = 0x5145564d // "QEVM"
	qemuVMFileVersion = 3

	secStart         = 0x01
	secPart          = 0x02
	secEnd           = 0x03
	secConfiguration = 0x07
	secSubsection    = 0x05
	secFooter        = 0x7e

	ramFlagZero     = 0x02
	ramFlagMemSize  = 0x04
	ramFlagPage     = 0x08
	ramFlagEOS      = 0x10
	ramFlagContinue = 0x20

	pageSize = 4096
)

// ErrStream means a migration stream is not one the splitter knows.
var ErrStream = errors.New("unexpected migration stream")

// splitRAM reads a migration stream from r and writes it to state with
// every page of the RAM block named block taken out and written, at its
// offset, to the new file mem (sparse: zero pages are holes). It returns
// when the stream ended; on error the caller removes both files.
func splitRAM(r io.Reader, state io.Writer, mem *os.File, block string) error {
	sp := &splitter{in: bufio.NewReaderSize(r, 1<<20), out: bufio.NewWriterSize(state, 256<<10), mem: mem, block: block}
	if err := sp.run(); err != nil {
		return err
	}
	if err := sp.flushRun(); err != nil {
		return err
	}
	return sp.out.Flush()
}

type splitter struct {
	in    *bufio.Reader
	out   *bufio.Writer
	mem   *os.File
	block string

	ignoreShared bool  // the stream's configuration lists x-ignore-shared
	ramSection   int32 // the "ram" section's id, -1 before its START
	blockSize    int64 // used_length of block
	inBlock      string
	lastOut      string // the block of the last page record written to out

	written []uint64 // pages of block written to mem (a bitmap)
	// pending is a stretch of consecutive pages of block not yet written
	// to mem, at pendingAt.
	pending   []byte
	pendingAt int64
}

func (sp *splitter) run() error {
	sp.ramSection = -1
	if magic, err := sp.u32(); err != nil || magic != qemuVMFileMagic {
		return fmt.Errorf("%w: no QEMU migration header (%v)", ErrStream, err)
	}
	if v, err := sp.u32(); err != nil || v != qemuVMFileVersion {
		return fmt.Errorf("%w: stream version %d, want %d", ErrStream, v, qemuVMFileVersion)
	}
	sp.putU32(qemuVMFileMagic)
	sp.putU32(qemuVMFileVersion)
	for {
		typ, err := sp.in.ReadByte()
		if err != nil {
			return fmt.Errorf("%w: ended before the devices' state: %v", ErrStream, err)
		}
		switch typ {
		case secConfiguration:
			sp.out.WriteByte(typ)
			if err := sp.configuration(); err != nil {
				return err
			}
		case secStart, secPart, secEnd:
			sp.out.WriteByte(typ)
			if err := sp.ramSectionOf(typ); err != nil {
				return err
			}
		default:
			if sp.ramSection < 0 || sp.blockSize == 0 {
				return fmt.Errorf("%w: section type %#x before RAM block %q", ErrStream, typ, sp.block)
			}
			// The devices' state and EOF: RAM is done with.
			sp.out.WriteByte(typ)
			if _, err := io.Copy(sp.out, sp.in); err != nil {
				return err
			}
			return nil
		}
	}
}

// configuration copies the configuration section: the machine's name
// and the subsections QEMU 7.2 may add.
func (sp *splitter) configuration() error {
	n, err := sp.u32()
	if err != nil {
		return err
	}
	sp.putU32(n)
	if n > 256 {
		return fmt.Errorf("%w: machine name of %d bytes", ErrStream, n)
	}
	if err := sp.copyN(int64(n)); err != nil {
		return err
	}
	for {
		b, err := sp.in.Peek(1)
		if err != nil {
			return err
		}
		if b[0] != secSubsection {
			return nil
		}
		sp.in.ReadByte()
		sp.out.WriteByte(secSubsection)
		name, err := sp.str()
		if err != nil {
			return err
		}
		version, err := sp.u32()
		if err != nil {
			return err
		}
		sp.putU32(version)
		switch name {
		case "configuration/target-page-bits":
			if bits, err := sp.u32(); err != nil {
				return err
			} else if bits != 12 {
				return fmt.Errorf("%w: target pages of 2^%d bytes", ErrStream, bits)
			} else {
				sp.putU32(bits)
			}
		case "configuration/capabilities":
			count, err := sp.u32()
			if err != nil {
				return err
			}
			sp.putU32(count)
			for i := uint32(0); i < count; i++ {
				c, err := sp.str()
				if err != nil {
					return err
				}
				if c == "x-ignore-shared" {
					sp.ignoreShared = true
				}
			}
		case "configuration/uuid":
			if err := sp.copyN(16); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: configuration subsection %q", ErrStream, name)
		}
	}
}

// ramSectionOf rewrites a START, PART or END section of "ram" (typ is
// written already).
func (sp *splitter) ramSectionOf(typ byte) error {
	id, err := sp.u32()
	if err != nil {
		return err
	}
	sp.putU32(id)
	if typ == secStart {
		name, err := sp.str()
		if err != nil {
			return err
		}
		if name != "ram" || sp.ramSection >= 0 {
			return fmt.Errorf("%w: iterative section %q", ErrStream, name)
		}
		if err := sp.copyN(8); err != nil { // instance and version ids
			return err
		}
		sp.ramSection = int32(id)
	} else if int32(id) != sp.ramSection {
		return fmt.Errorf("%w: section %d is not RAM's", ErrStream, id)
	}
	// Each section names the block of its first page again: the
	// loader is not asked to remember one across sections.
	sp.lastOut = ""
	if err := sp.records(); err != nil {
		return err
	}
	if b, err := sp.in.Peek(1); err == nil && b[0] == secFooter {
		return sp.copyN(5) // the footer and its section id
	}
	return nil
}

// records rewrites RAM records up to and including EOS.
func (sp *splitter) records() error {
	for {
		hdr, err := sp.u64()
		if err != nil {
			return fmt.Errorf("%w: RAM section cut short: %v", ErrStream, err)
		}
		flags, addr := hdr&(pageSize-1), int64(hdr&^(pageSize-1))
		switch flags &^ ramFlagContinue {
		case ramFlagEOS:
			sp.putU64(hdr)
			return nil
		case ramFlagMemSize:
			sp.putU64(hdr)
			if err := sp.blocks(addr); err != nil {
				return err
			}
		case ramFlagZero, ramFlagPage:
			if flags&ramFlagContinue == 0 {
				if sp.inBlock, err = sp.readStr(); err != nil {
					return err
				}
			} else if sp.inBlock == "" {
				return fmt.Errorf("%w: a page continues no block", ErrStream)
			}
			if err := sp.page(flags&^ramFlagContinue, addr); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: RAM record flags %#x (compression, XBZRLE and RDMA are not used by banger)", ErrStream, flags)
		}
	}
}

// blocks copies the list of RAM blocks after MEM_SIZE (total bytes) and
// makes mem the size of the one split out.
func (sp *splitter) blocks(total int64) error {
	if !sp.ignoreShared {
		return fmt.Errorf("%w: written without x-ignore-shared", ErrStream)
	}
	for total > 0 {
		name, err := sp.readStr()
		if err != nil {
			return err
		}
		sp.putStr(name)
		used, err := sp.u64()
		if err != nil {
			return err
		}
		sp.putU64(used)
		if err := sp.copyN(8); err != nil { // its guest address (x-ignore-shared)
			return err
		}
		if name == sp.block {
			sp.blockSize = int64(used)
			if err := sp.mem.Truncate(sp.blockSize); err != nil {
				return err
			}
			sp.written = make([]uint64, (sp.blockSize/pageSize+63)/64)
		}
		if int64(used) > total {
			return fmt.Errorf("%w: RAM blocks add up to more than their total", ErrStream)
		}
		total -= int64(used)
	}
	if sp.blockSize == 0 {
		return fmt.Errorf("%w: no RAM block %q", ErrStream, sp.block)
	}
	return nil
}

// page handles one page record (its header and block read): block's
// pages go to mem, others' records to out.
func (sp *splitter) page(kind uint64, addr int64) error {
	if sp.inBlock != sp.block {
		hdr := uint64(addr) | kind
		if sp.lastOut == sp.inBlock {
			sp.putU64(hdr | ramFlagContinue)
		} else {
			sp.putU64(hdr)
			sp.putStr(sp.inBlock)
			sp.lastOut = sp.inBlock
		}
		if kind == ramFlagZero {
			return sp.copyN(1)
		}
		return sp.copyN(pageSize)
	}
	if addr < 0 || addr+pageSize > sp.blockSize {
		return fmt.Errorf("%w: page at %#x beyond RAM block %q of %d bytes", ErrStream, addr, sp.block, sp.blockSize)
	}
	n := addr / pageSize
	if kind == ramFlagZero {
		ch, err := sp.in.ReadByte()
		if err != nil {
			return err
		}
		// A hole reads as zeros; only a page written before (sent again,
		// which a paused guest never makes QEMU do) or a page of
		// another fill byte needs writing.
		if ch == 0 && sp.written[n/64]&(1<<(n%64)) == 0 {
			return nil
		}
		buf := make([]byte, pageSize)
		for i := range buf {
			buf[i] = ch
		}
		return sp.writePage(addr, buf)
	}
	if len(sp.pending) > 0 && (sp.pendingAt+int64(len(sp.pending)) != addr || len(sp.pending) >= 1<<20) {
		if err := sp.flushRun(); err != nil {
			return err
		}
	}
	if len(sp.pending) == 0 {
		sp.pendingAt = addr
	}
	sp.pending = append(sp.pending, make([]byte, pageSize)...)
	if _, err := io.ReadFull(sp.in, sp.pending[len(sp.pending)-pageSize:]); err != nil {
		return fmt.Errorf("%w: page cut short: %v", ErrStream, err)
	}
	sp.written[n/64] |= 1 << (n % 64)
	return nil
}

func (sp *splitter) writePage(addr int64, b []byte) error {
	if err := sp.flushRun(); err != nil {
		return err
	}
	n := addr / pageSize
	sp.written[n/64] |= 1 << (n % 64)
	_, err := sp.mem.WriteAt(b, addr)
	return err
}

func (sp *splitter) flushRun() error {
	if len(sp.pending) == 0 {
		return nil
	}
	_, err := sp.mem.WriteAt(sp.pending, sp.pendingAt)
	sp.pending = sp.pending[:0]
	return err
}

func (sp *splitter) u32() (uint32, error) {
	var b [4]byte
	_, err := io.ReadFull(sp.in, b[:])
	return binary.BigEndian.Uint32(b[:]), err
}

func (sp *splitter) u64() (uint64, error) {
	var b [8]byte
	_, err := io.ReadFull(sp.in, b[:])
	return binary.BigEndian.Uint64(b[:]), err
}

// readStr reads a string as QEMU writes one: a length byte, the bytes.
func (sp *splitter) readStr() (string, error) {
	n, err := sp.in.ReadByte()
	if err != nil {
		return "", err
	}
	b := make([]byte, n)
	_, err = io.ReadFull(sp.in, b)
	return string(b), err
}

// str reads a string and copies it to out.
func (sp *splitter) str() (string, error) {
	s, err := sp.readStr()
	if err == nil {
		sp.putStr(s)
	}
	return s, err
}

func (sp *splitter) putU32(v uint32) { sp.out.Write(binary.BigEndian.AppendUint32(nil, v)) }
func (sp *splitter) putU64(v uint64) { sp.out.Write(binary.BigEndian.AppendUint64(nil, v)) }
func (sp *splitter) putStr(s string) { sp.out.WriteByte(byte(len(s))); sp.out.WriteString(s) }

func (sp *splitter) copyN(n int64) error {
	_, err := io.CopyN(sp.out, sp.in, n)
	if err != nil {
		return fmt.Errorf("%w: cut short: %v", ErrStream, err)
	}
	return nil
}
