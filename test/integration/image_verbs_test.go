package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/imagepull/imagetest"
	"banger/internal/testenv"
)

// tarOf is an uncompressed tar of files, name to content, in order.
func tarOf(t *testing.T, files ...[2]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if strings.HasSuffix(f[0], "/") {
			tw.WriteHeader(&tar.Header{Name: f[0], Typeflag: tar.TypeDir, Mode: 0o755})
			continue
		}
		tw.WriteHeader(&tar.Header{Name: f[0], Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(f[1]))})
		tw.Write([]byte(f[1]))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sha(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// writeDocker25Archive writes what `docker save` writes since Docker 25:
// an OCI image layout (oci-layout, index.json, blobs/sha256/…) with the
// legacy manifest.json beside it naming the same blobs, the layers
// uncompressed.
func writeDocker25Archive(t *testing.T, path, repoTag string, layer []byte, cmd []string) {
	t.Helper()
	cfg, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Cmd": cmd, "Env": []string{"PATH=/bin"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + sha(layer)}},
	})
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + sha(cfg), "size": len(cfg)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + sha(layer), "size": len(layer)}},
	})
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + sha(manifest), "size": len(manifest),
			"annotations": map[string]string{"io.containerd.image.name": "docker.io/library/" + repoTag, "org.opencontainers.image.ref.name": strings.SplitN(repoTag, ":", 2)[1]}}},
	})
	legacy, _ := json.Marshal([]any{map[string]any{"Config": "blobs/sha256/" + sha(cfg), "RepoTags": []string{repoTag}, "Layers": []string{"blobs/sha256/" + sha(layer)}}})
	archive := tarOf(t,
		[2]string{"blobs/", ""}, [2]string{"blobs/sha256/", ""},
		[2]string{"blobs/sha256/" + sha(layer), string(layer)},
		[2]string{"blobs/sha256/" + sha(cfg), string(cfg)},
		[2]string{"blobs/sha256/" + sha(manifest), string(manifest)},
		[2]string{"index.json", string(index)},
		[2]string{"manifest.json", string(legacy)},
		[2]string{"oci-layout", `{"imageLayoutVersion": "1.0.0"}`},
		[2]string{"repositories", fmt.Sprintf(`{"%s":{"%s":"%s"}}`, strings.Split(repoTag, ":")[0], strings.Split(repoTag, ":")[1], sha(manifest))},
	)
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestImageVerbs: pull --json, Ctrl-C during a pull, a bzip2 root file
// system and a Docker 25 (OCI form) docker save archive, through the CLI.
func TestImageVerbs(t *testing.T) {
	testenv.RequireBinary(t, "debugfs", "apt-get install e2fsprogs")
	reg := imagetest.StartRegistry(t)
	in := newInstance(t)
	pid := in.daemonPID()

	t.Run("pull --json", func(t *testing.T) {
		in := in.with(t)
		ref := smallImage(t, reg, "verbs/json:1", "j")
		out := in.ok("image", "pull", "--json", ref, "--name", "js")
		var evs []api.Event
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var ev api.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatalf("line %q is not a JSON event: %v", sc.Text(), err)
			}
			evs = append(evs, ev)
		}
		if len(evs) < 3 || evs[0].Type != api.EventProgress || evs[0].Stage != "resolve" {
			t.Fatalf("events: %+v", evs)
		}
		stages := map[string]bool{}
		for _, ev := range evs[:len(evs)-1] {
			stages[ev.Stage] = ev.Type == api.EventProgress
		}
		last := evs[len(evs)-1]
		if !stages["download"] || !stages["ext4"] || !stages["inject"] || last.Type != api.EventResult || last.Image == nil || last.Image.Name != "js" || last.Image.Ref != ref {
			t.Errorf("stages %v, last event %+v", stages, last)
		}
	})

	t.Run("Ctrl-C during a pull", func(t *testing.T) {
		in := in.with(t)
		ref := randomImage(t, reg, "verbs/slow:1", 4<<20, 4<<20)
		var have []imageJSON
		in.jsonOut(&have, "image", "list", "--json")
		var known []string
		for _, img := range have {
			known = append(known, img.ID)
		}
		reg.SetDelay(time.Second)
		defer reg.SetDelay(0)
		cmd := in.cli("image", "pull", ref, "--name", "slow")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(15 * time.Second); len(in.leftovers(known...)) == 0 && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		if len(in.leftovers(known...)) == 0 {
			t.Fatal("the pull never started")
		}
		began := time.Now()
		cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 || time.Since(began) > 5*time.Second {
			t.Errorf("Ctrl-C: %v after %s, want exit 130 at once (%q)", err, time.Since(began), stderr.String())
		}
		// The daemon stops the pull (no one else waits for it) and keeps
		// nothing of it; it runs on.
		var left []string
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if left = in.leftovers(known...); len(left) == 0 {
				break
			}
		}
		if len(left) != 0 {
			t.Errorf("left after Ctrl-C: %v", left)
		}
		var st struct{ PID, Pulls int }
		in.jsonOut(&st, "daemon", "status", "--json")
		if st.PID != pid || st.Pulls != 0 {
			t.Errorf("daemon after Ctrl-C: %+v, want pid %d and no pull", st, pid)
		}
		in.fails("not found", "image", "show", "slow")
	})

	t.Run("bzip2 rootfs", func(t *testing.T) {
		in := in.with(t)
		testenv.RequireBinary(t, "bzip2", "apt-get install bzip2")
		raw := tarOf(t, [2]string{"bin/", ""}, [2]string{"bin/sh", "#!"}, [2]string{"etc/", ""}, [2]string{"etc/release", "bz2-root\n"})
		path := filepath.Join(t.TempDir(), "root.tar.bz2")
		bz := exec.Command("bzip2", "-c")
		bz.Stdin = bytes.NewReader(raw)
		out, err := bz.Output()
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(path, out, 0o644)
		in.ok("image", "import", "-q", path)
		var img importJSON
		in.jsonOut(&img, "image", "show", "root", "--json")
		if !strings.HasPrefix(img.Source, "rootfs") || strings.Join(img.Config.Cmd, " ") != "/bin/sh" {
			t.Errorf("bzip2 rootfs image: %+v", img)
		}
		if got, err := exec.Command("debugfs", "-R", "cat /etc/release", img.Rootfs).Output(); err != nil || string(got) != "bz2-root\n" {
			t.Errorf("content: %q %v", got, err)
		}
	})

	t.Run("Docker 25 docker save", func(t *testing.T) {
		in := in.with(t)
		path := filepath.Join(t.TempDir(), "app25.tar")
		writeDocker25Archive(t, path, "app:25", tarOf(t, [2]string{"app/", ""}, [2]string{"app/run", "docker 25\n"}), []string{"/app/run", "--flag"})
		// Named after the file, as any archive without --ref.
		if name := in.ok("image", "import", "-q", path); name != "app25\n" {
			t.Errorf("imported as %q, want app25", name)
		}
		var img importJSON
		in.jsonOut(&img, "image", "show", "app25", "--json")
		if !strings.Contains(img.Source, "docker") || strings.Join(img.Config.Cmd, " ") != "/app/run --flag" {
			t.Errorf("Docker 25 archive image: %+v", img)
		}
		if got, err := exec.Command("debugfs", "-R", "cat /app/run", img.Rootfs).Output(); err != nil || string(got) != "docker 25\n" {
			t.Errorf("content: %q %v", got, err)
		}
	})
}
