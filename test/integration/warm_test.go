package integration

import (
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/internal/imagepull/imagetest"
)

// TestVMRunWarm: the first `vm run` of an image boots and leaves a warm
// template; the next restores from it, prints its own new name, and runs
// the image's command afresh (it never ran in the template); --cold and
// `image rm` behave.
func TestVMRunWarm(t *testing.T) {
	in := newInstance(t) // warm starts are the default
	vmFixtures(t, in)
	reg := imagetest.StartRegistry(t)
	layer := busyboxLayer(t)
	marker := imagetest.Layer(t, imagetest.Entry{Name: "etc/marker", Body: "MARKER\n"})
	in.ok("image", "pull", "-q", reg.Push(t, "test/marker:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{layer, marker}})), "--name", "bbm")
	// The image's command says whether its disk was used before, and
	// marks it.
	in.ok("image", "pull", "-q", reg.Push(t, "test/mark:2", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{layer},
		Config: v1.Config{Cmd: []string{"/bin/sh", "-c", "if [ -f /mark ]; then echo MARK-FOUND; else echo MARK-NEW; fi; echo x > /mark; sync"}}})), "--name", "mk")
	shape := []string{"--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu"}
	run := func(name string) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		out := in.ok(append(append([]string{"vm", "run", "--rm", "--image", "bbm", "--name", name}, shape...), "--", "sh", "-c", "busybox hostname; cat /etc/marker")...)
		return out, time.Since(start)
	}
	out, cold := run("w1")
	if out != "w1\nMARKER\n" {
		t.Errorf("cold run printed %q", out)
	}
	var sns []snapshotJSON
	in.jsonOut(&sns, "snapshot", "ls", "--json")
	if len(sns) != 1 || sns[0].Kind != "template" || sns[0].State != "ready" || sns[0].Image != "bbm" || sns[0].SourceVM != "w1" {
		t.Fatalf("templates after the first run = %+v", sns)
	}
	out, warm := run("w2")
	if out != "w2\nMARKER\n" {
		t.Errorf("warm run printed %q", out)
	}
	t.Logf("vm run --rm: cold %s, warm %s (%.2f×)", cold.Round(time.Millisecond), warm.Round(time.Millisecond), warm.Seconds()/cold.Seconds())
	if warm >= cold {
		t.Errorf("the warm run (%s) was not faster than the cold one (%s)", warm, cold)
	}

	var v vmJSON
	in.jsonOut(&v, append([]string{"vm", "create", "--name", "w3", "--image", "bbm", "--json"}, shape...)...)
	if v.Origin != "template "+sns[0].Name {
		t.Errorf("w3's origin = %q, want the template", v.Origin)
	}
	if logs := in.ok("vm", "logs", "w3"); !strings.Contains(logs, "restored as w3") {
		t.Errorf("w3's console does not say it was restored:\n%s", logs)
	}
	v = vmJSON{}
	in.jsonOut(&v, append([]string{"vm", "create", "--name", "w4", "--image", "bbm", "--cold", "--json"}, shape...)...)
	if v.Origin != "" {
		t.Errorf("--cold: origin %q", v.Origin)
	}
	in.ok("vm", "rm", "-f", "w3", "w4")

	// The image's own command: held while the template is taken, so a
	// restored VM runs it afresh on a disk that never saw it.
	in.ok(append([]string{"vm", "create", "--name", "m1", "--image", "mk"}, shape...)...)
	in.waitLogs("m1", "MARK-NEW")
	in.jsonOut(&v, append([]string{"vm", "create", "--name", "m2", "--image", "mk", "--json"}, shape...)...)
	if !strings.HasPrefix(v.Origin, "template ") {
		t.Errorf("m2 was not restored: origin %q", v.Origin)
	}
	in.waitLogs("m2", "MARK-NEW")
	for _, l := range strings.Split(in.ok("vm", "logs", "m2"), "\n") {
		if strings.TrimSpace(l) == "MARK-FOUND" {
			t.Errorf("m2's command found a mark it never made")
		}
	}
	in.ok("vm", "stop", "m2")
	in.ok("vm", "start", "m2")
	in.waitLogs("m2", "MARK-FOUND")
	in.ok("vm", "rm", "-f", "m1", "m2")

	// image warm makes the template now, so even the first VM of a new
	// shape restores instead of booting.
	shape384 := []string{"--kernel", "k", "--vcpu", "1", "--memory", "384M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu"}
	var warmed snapshotJSON
	in.jsonOut(&warmed, append([]string{"image", "warm", "bbm", "--json"}, shape384...)...)
	if warmed.Kind != "template" || warmed.State != "ready" || warmed.Image != "bbm" {
		t.Fatalf("image warm = %+v", warmed)
	}
	in.jsonOut(&v, append([]string{"vm", "create", "--name", "w5", "--image", "bbm", "--json"}, shape384...)...)
	if v.Origin != "template "+warmed.Name || v.MemoryMiB != 384 {
		t.Errorf("the first VM of the warmed shape: origin %q, memory %d; want the template %s", v.Origin, v.MemoryMiB, warmed.Name)
	}
	if out := in.ok("vm", "exec", "w5", "--", "cat", "/etc/marker"); out != "MARKER\n" {
		t.Errorf("w5 reads %q", out)
	}
	in.ok("vm", "rm", "-f", "w5")

	// A template goes with its image.
	in.ok("image", "rm", "bbm")
	in.jsonOut(&sns, "snapshot", "ls", "--json")
	for _, s := range sns {
		if s.Image == "bbm" {
			t.Errorf("template of a removed image left: %+v", s)
		}
	}
	if left := in.ramFiles(); len(left) != 0 {
		t.Errorf("guest RAM files left: %v", left)
	}
}
