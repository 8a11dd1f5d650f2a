package vsockagent

import (
	"context"
	"fmt"
	"io"
	"os"
)

// ReadyLine is what the agent prints on the console when it is ready;
// boot measurements and tests look for it.
const ReadyLine = "banger-vsock-agent: ready"

// Serve runs the agent until ctx is done. For now it only announces
// readiness, on stdout and the console: the agent protocol (exec, files,
// ports) is not built yet. It is the same whether systemd started the
// agent service or the init stage runs it as PID 1.
func Serve(ctx context.Context, version string, stdout io.Writer) error {
	fmt.Fprintln(stdout, ReadyLine, version)
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		fmt.Fprintln(f, ReadyLine, version)
		f.Close()
	}
	<-ctx.Done()
	return nil
}
