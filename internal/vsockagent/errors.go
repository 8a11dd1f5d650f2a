package vsockagent

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// Error codes an ERROR frame may carry besides its message, so a host
// can act on why a request failed without reading the text (the E2B
// translation maps them onto Connect codes and HTTP statuses).
const (
	CodeNotFound  = "not_found"  // the path, the user's home, the cwd's target is missing
	CodeExists    = "exists"     // mkdir of a directory that is there already
	CodeNotDir    = "not_dir"    // a directory was needed (or a file is in the way)
	CodeIsDir     = "is_dir"     // a file was needed
	CodeInvalid   = "invalid"    // the request itself is wrong (bad field, missing cwd)
	CodeNoUser    = "no_user"    // the user is not in the guest's /etc/passwd
	CodeNoSpace   = "no_space"   // ENOSPC or EDQUOT
	CodeDenied    = "denied"     // EACCES or EPERM
	CodeNoProcess = "no_process" // no detached process (or retained exit) has that pid
	CodeNoStdin   = "no_stdin"   // the process's stdin is /dev/null or already closed
	CodeNotTTY    = "not_tty"    // the process has no terminal
	CodeNotExec   = "not_exec"   // the command is missing or not executable (attached exec)
	CodeOverrun   = "overrun"    // an attacher fell behind the process's output by more than its buffer
)

// AgentError is a request the agent could not carry out: the ERROR
// frame's message and its machine code ("" from an older agent, or
// when no code fits). Stream reads, Wait and the typed helpers return
// it; match it with errors.As.
type AgentError struct {
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
}

var _ error = (*AgentError)(nil)

func (e *AgentError) Error() string { return e.Message }

// IsCode reports whether err is an *AgentError with that code.
func IsCode(err error, code string) bool {
	var ae *AgentError
	return errors.As(err, &ae) && ae.Code == code
}

// agentErr makes an *AgentError from a code and a message.
func agentErr(code, format string, args ...any) *AgentError {
	return &AgentError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// coded gives err the code its cause calls for (an *AgentError keeps
// its own): how file system failures reach the host.
func coded(err error) *AgentError {
	var ae *AgentError
	if errors.As(err, &ae) {
		return ae
	}
	return &AgentError{Code: codeOf(err), Message: err.Error()}
}

func codeOf(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return CodeNotFound
	case errors.Is(err, syscall.ENOTDIR):
		return CodeNotDir
	case errors.Is(err, syscall.EISDIR):
		return CodeIsDir
	case errors.Is(err, fs.ErrExist), errors.Is(err, syscall.ENOTEMPTY):
		return CodeExists
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return CodeNoSpace
	case errors.Is(err, fs.ErrPermission):
		return CodeDenied
	case errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.ELOOP):
		return CodeInvalid
	}
	return ""
}
