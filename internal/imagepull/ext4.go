package imagepull

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"

	"banger/internal/imagepull/flatten"
	"banger/internal/system"
)

// The block size tar2ext4 (hcsshim's compactext4) writes.
const ext4BlockSize = 4096

// Headroom is how much room a built image keeps beyond its contents.
type Headroom struct {
	// MinFreeBytes and FreePercent: free space is at least the larger of
	// the two (FreePercent of the used size).
	MinFreeBytes int64
	FreePercent  int
	// FreeInodes is how many inodes stay free at least. Growing the file
	// adds more: every new block group brings its share.
	FreeInodes int
}

// DefaultHeadroom leaves room for the guest agents and for changes made
// to the image later, at a cost in apparent size only: the file is sparse.
var DefaultHeadroom = Headroom{MinFreeBytes: 64 << 20, FreePercent: 20, FreeInodes: 1024}

// reserveDir holds the placeholder files that make tar2ext4 size the
// inode table for Headroom.FreeInodes; BuildExt4 deletes them again.
const reserveDir = ".banger-inode-reserve"

// Ext4Stats describes a finished image file.
type Ext4Stats struct {
	SizeBytes   int64 // apparent size
	Blocks      int64
	FreeBlocks  int64
	Inodes      int64
	FreeInodes  int64
	UsedInodes  int64
	InodesGroup int64
}

// BuildExt4 writes the flattened tree into a new ext4 file at out without
// mounting anything and without root: file owners, modes, xattrs and
// device numbers come from the tree. The result is a regular writable
// ext4 (no read-only feature) that passes `e2fsck -fn` and has the free
// space and inodes that headroom asks for. On error out is removed.
func BuildExt4(ctx context.Context, runner system.CommandRunner, tree *flatten.Tree, out string, headroom Headroom) (stats Ext4Stats, err error) {
	// tar2ext4 makes an inode table with exactly as many inodes as files,
	// and new ones come only with new 128 MiB block groups. Placeholder
	// files reserve them instead, without growing the image.
	tree.Remove(reserveDir)
	if headroom.FreeInodes > 0 {
		if err := tree.AddLayer(reserveLayer(headroom.FreeInodes)); err != nil {
			return stats, fmt.Errorf("reserving inodes: %w", err)
		}
	}
	f, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return stats, fmt.Errorf("creating %s: %w", out, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(out)
		}
	}()

	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tree.WriteTar(pw)) }()
	convErr := tar2ext4.ConvertTarToExt4(pr, f)
	// Unblock the writer if the converter stopped early.
	pr.CloseWithError(errors.New("ext4 conversion stopped"))
	if convErr != nil {
		return stats, fmt.Errorf("writing ext4: %w", convErr)
	}
	if ctx.Err() != nil {
		return stats, context.Cause(ctx)
	}
	if err := f.Sync(); err != nil {
		return stats, fmt.Errorf("writing ext4: %w", err)
	}
	if err := f.Close(); err != nil {
		return stats, fmt.Errorf("writing ext4: %w", err)
	}

	// tar2ext4 builds read-only layers: drop that feature, let e2fsck set
	// the inode-bitmap padding it leaves unset, free the reserved inodes,
	// then grow the file.
	if _, err := runner.Run(ctx, "tune2fs", "-O", "^read-only", out); err != nil {
		return stats, fmt.Errorf("clearing read-only feature: %w", err)
	}
	if err := fsckFix(ctx, runner, out); err != nil {
		return stats, err
	}
	if headroom.FreeInodes > 0 {
		if err := releaseReserve(ctx, runner, out, headroom.FreeInodes); err != nil {
			return stats, err
		}
	}
	sb, err := readSuperBlock(out)
	if err != nil {
		return stats, err
	}
	target := growTarget(sb, headroom)
	if target > sb.Blocks {
		if _, err := runner.Run(ctx, "resize2fs", out, strconv.FormatInt(target*ext4BlockSize/1024, 10)+"K"); err != nil {
			return stats, fmt.Errorf("growing ext4: %w", err)
		}
	}
	return readSuperBlock(out)
}

// growTarget returns the block count that gives the free space asked for.
func growTarget(sb Ext4Stats, h Headroom) int64 {
	used := sb.Blocks - sb.FreeBlocks
	return used + max(h.MinFreeBytes/ext4BlockSize, used*int64(h.FreePercent)/100)
}

// reserveLayer is a tar of n empty files in reserveDir.
func reserveLayer(n int) io.Reader {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: reserveDir + "/", Typeflag: tar.TypeDir, Mode: 0o700, Format: tar.FormatUSTAR})
	for i := 0; i < n; i++ {
		tw.WriteHeader(&tar.Header{Name: reserveDir + "/" + strconv.Itoa(i), Typeflag: tar.TypeReg, Mode: 0o600, Format: tar.FormatUSTAR})
	}
	tw.Close()
	return &buf
}

// releaseReserve deletes the placeholder files in one debugfs batch.
func releaseReserve(ctx context.Context, runner system.CommandRunner, file string, n int) error {
	stdinRunner, ok := runner.(system.StdinRunner)
	if !ok {
		return fmt.Errorf("releasing reserved inodes: runner %T cannot feed standard input", runner)
	}
	var script bytes.Buffer
	for i := 0; i < n; i++ {
		fmt.Fprintf(&script, "rm /%s/%d\n", reserveDir, i)
	}
	fmt.Fprintf(&script, "rmdir /%s\n", reserveDir)
	out, err := stdinRunner.RunStdin(ctx, bytes.NewReader(script.Bytes()), "debugfs", "-w", "-f", "-", file)
	if err != nil {
		return fmt.Errorf("releasing reserved inodes: %w", err)
	}
	if bad := scanDebugfsOutput(out, script.Bytes(), nil); bad != "" {
		return fmt.Errorf("releasing reserved inodes: debugfs: %s", bad)
	}
	return nil
}

func fsckFix(ctx context.Context, runner system.CommandRunner, file string) error {
	_, err := runner.Run(ctx, "e2fsck", "-fy", file)
	var ce *system.CommandError
	// Exit status 1 means "errors corrected", which is the point.
	if err != nil && !(errors.As(err, &ce) && ce.ExitCode == 1) {
		return fmt.Errorf("checking ext4: %w", err)
	}
	return nil
}

func readSuperBlock(file string) (Ext4Stats, error) {
	sb, err := tar2ext4.ReadExt4SuperBlock(file)
	if err != nil {
		return Ext4Stats{}, fmt.Errorf("reading ext4 superblock of %s: %w", file, err)
	}
	fi, err := os.Stat(file)
	if err != nil {
		return Ext4Stats{}, err
	}
	blocks := int64(sb.BlocksCountLow) | int64(sb.BlocksCountHigh)<<32
	free := int64(sb.FreeBlocksCountLow) | int64(sb.FreeBlocksCountHigh)<<32
	return Ext4Stats{
		SizeBytes:   fi.Size(),
		Blocks:      blocks,
		FreeBlocks:  free,
		Inodes:      int64(sb.InodesCount),
		FreeInodes:  int64(sb.FreeInodesCount),
		UsedInodes:  int64(sb.InodesCount) - int64(sb.FreeInodesCount),
		InodesGroup: int64(sb.InodesPerGroup),
	}, nil
}
