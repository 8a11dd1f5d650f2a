package paths

import (
	"debug/elf"
	"errors"
	"fmt"
	"strings"
)

// ErrAgentNotStatic means the guest agent binary found is dynamically
// linked. It runs as /init in an initramfs and inside images of every
// distribution, where no matching C library exists, so such an agent
// makes every VM die with "No working init found".
var ErrAgentNotStatic = errors.New("guest agent is not statically linked")

// AgentBinaryName is the guest agent's file name, next to bangerd or in
// banger's library directory.
const AgentBinaryName = "banger-vsock-agent"

// GuestAgentBinary finds the guest agent (CompanionBinaryPath) and checks
// that it is a static x86-64 Linux executable.
func GuestAgentBinary() (string, error) {
	p, err := CompanionBinaryPath(AgentBinaryName)
	if err != nil {
		return "", err
	}
	if err := CheckStaticBinary(p); err != nil {
		return "", err
	}
	return p, nil
}

// CheckStaticBinary returns ErrAgentNotStatic (with the reason and how to
// rebuild) when path is an ELF file with a program interpreter or shared
// library dependencies, and an error when it is no x86-64 ELF at all.
func CheckStaticBinary(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("guest agent %s is not an executable (%v): rebuild it with `scripts/build.sh`", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("guest agent %s is built for %s, guests are x86-64: rebuild it with `scripts/build.sh`", path, f.Machine)
	}
	var why []string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			why = append(why, "it asks for a program interpreter")
			break
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		why = append(why, "it needs "+strings.Join(libs, ", "))
	}
	if len(why) > 0 {
		return fmt.Errorf("%w: %s: %s; VMs would panic with \"No working init found\": rebuild it with `scripts/build.sh` or `CGO_ENABLED=0 go build -o DIR ./cmd/banger-vsock-agent`",
			ErrAgentNotStatic, path, strings.Join(why, " and "))
	}
	return nil
}
