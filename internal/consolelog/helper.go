package consolelog

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"

	"banger/internal/system"
)

// HelperCommand is the bangerd subcommand that runs HelperMain.
const HelperCommand = "console-log"

// helperFD is the descriptor the helper reads the console pipe from.
const helperFD = 3

// HelperMain is `bangerd console-log --max BYTES PATH`: it drains the
// console pipe on descriptor 3 into the log at PATH until every writer
// (the VMM) is gone, then exits 0. Write errors go to standard error as
// JSON log lines (bangerd hands it its own log file), once per change.
func HelperMain(args []string) int {
	fs := flag.NewFlagSet(HelperCommand, flag.ContinueOnError)
	max := fs.Int64("max", DefaultMax, "cap in bytes on the log and its rotated half together")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("helper", HelperCommand, "path", fs.Arg(0))
	if fs.NArg() != 1 {
		log.Error("usage: bangerd console-log --max BYTES PATH, with the console pipe on descriptor 3")
		return 2
	}
	pipe := os.NewFile(helperFD, "console")
	w, err := Open(fs.Arg(0), *max)
	if err != nil {
		// Still drain: a VMM whose console nobody reads loses only its
		// output, and the pipe's end tells when it is gone.
		log.Error("console log unavailable: output is dropped", "err", err)
		io.Copy(io.Discard, pipe)
		return 1
	}
	defer w.Close()
	if err := Drain(pipe, w, func(err error) { log.Warn("console output dropped", "err", err) }); err != nil {
		log.Error("reading the console pipe", "err", err)
		return 1
	}
	return 0
}

// helperArgs is the helper's command line after the binary.
func helperArgs(path string, max int64) []string {
	return []string{HelperCommand, "--max", strconv.FormatInt(max, 10), path}
}

// IsHelper reports whether argv (a process's command line) is the helper
// keeping the log at path.
func IsHelper(argv []string, path string) bool {
	return len(argv) >= 3 && argv[1] == HelperCommand && argv[len(argv)-1] == path
}

// StartHelper starts `bin console-log` (bin is bangerd) for the log at
// path with cap max, in a session of its own: like the VMM it outlives
// its starter. Its standard error goes to stderr (nil: /dev/null). It
// returns the writing end of the console pipe, to hand to the VMM; the
// caller closes it once the VMM has its copy, and must wait for (reap)
// the process. The helper exits once the VMM, and so every writing
// end, is gone. opts tune the spawn (a start hook places it in its
// VM's cgroup).
func StartHelper(bin, path string, max int64, stderr *os.File, opts ...system.SpawnOption) (*os.File, *os.Process, error) {
	if max < MinMax {
		return nil, nil, fmt.Errorf("console log cap %d: use at least %d bytes", max, MinMax)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("making the console pipe: %w", err)
	}
	defer r.Close() // the helper has its own copy
	p, err := system.SpawnIn("", bin, helperArgs(path, max), []string{}, nil, stderr, []*os.File{r}, opts...)
	if err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("starting the console log helper: %w", err)
	}
	return w, p, nil
}
