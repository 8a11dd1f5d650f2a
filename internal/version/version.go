// Package version holds build information stamped in with -ldflags -X.
package version

// Set at build time: go build -ldflags "-X banger/internal/version.Version=v0.1.0 ...".
var (
	Version = "dev"
	Commit  = "unknown"
	Date    = "unknown"
)

// String is "VERSION (COMMIT, DATE)".
func String() string { return Version + " (" + Commit + ", " + Date + ")" }
