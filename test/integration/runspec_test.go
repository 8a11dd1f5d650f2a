package integration

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"banger/internal/imagepull/imagetest"
)

// TestVMRunOverride: a VM runs another command, environment, directory
// than its image's, booted or restored from a warm template, and execs
// get the environment and directory; the template made by a VM with an
// override does not pass it on to the next VM of the image.
func TestVMRunOverride(t *testing.T) {
	in := newInstance(t)
	vmFixtures(t, in)
	reg := imagetest.StartRegistry(t)
	in.ok("image", "pull", "-q", reg.Push(t, "test/says:1", imagetest.Image(t, imagetest.ImageSpec{Layers: [][]byte{busyboxLayer(t)},
		Config: v1.Config{Cmd: []string{"/bin/sh", "-c", "echo IMAGE-CMD $GREETING"}, Env: []string{"GREETING=image", "KEEP=kept"}}})), "--name", "says")
	shape := []string{"--image", "says", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--network", "none", "--vmm", "qemu"}
	say := `echo "OVERRIDE $GREETING $KEEP $(pwd)"`

	// Booted (the first VM of its image, which makes the template).
	in.ok(append(append([]string{"vm", "create", "--name", "o1", "-e", "GREETING=hi", "-w", "/tmp"}, shape...), "--", "/bin/sh", "-c", say)...)
	in.waitLogs("o1", "OVERRIDE hi kept /tmp")
	var v vmJSON
	in.jsonOut(&v, "vm", "show", "o1", "--json")
	if v.Origin != "" {
		t.Fatalf("o1 was not booted: origin %q", v.Origin)
	}
	// Restored, with nothing over the image: the image's own command.
	in.jsonOut(&v, append([]string{"vm", "create", "--name", "o2", "--json"}, shape...)...)
	if !strings.HasPrefix(v.Origin, "template ") {
		t.Fatalf("o2 was not restored: origin %q", v.Origin)
	}
	in.waitLogs("o2", "IMAGE-CMD image")
	if logs := in.ok("vm", "logs", "o2"); strings.Contains(logs, "OVERRIDE") {
		t.Errorf("o2 ran o1's command:\n%s", logs)
	}
	if out := in.ok("vm", "exec", "o2", "--", "sh", "-c", "echo $GREETING; pwd"); out != "image\n/\n" {
		t.Errorf("o2's exec defaults: %q", out)
	}
	// Restored, with its own override: --entrypoint drops the image's cmd.
	in.jsonOut(&v, append([]string{"vm", "create", "--name", "o3", "--json", "-e", "GREETING=bye", "-w", "/etc", "--entrypoint", `["/bin/sh","-c","` + strings.ReplaceAll(say, `"`, `\"`) + `"]`}, shape...)...)
	if !strings.HasPrefix(v.Origin, "template ") {
		t.Fatalf("o3 was not restored: origin %q", v.Origin)
	}
	in.waitLogs("o3", "OVERRIDE bye kept /etc")
	if out := in.ok("vm", "exec", "o3", "--", "sh", "-c", "echo $GREETING $KEEP; pwd"); out != "bye kept\n/etc\n" {
		t.Errorf("o3's exec defaults: %q", out)
	}
	show := in.ok("vm", "show", "o3")
	for _, want := range []string{"env:", "GREETING=bye", "workdir:", "/etc (over the image's)"} {
		if !strings.Contains(show, want) {
			t.Errorf("vm show o3 lacks %q:\n%s", want, show)
		}
	}
	// Restarted, it runs its own command again.
	in.ok("vm", "stop", "o3")
	in.ok("vm", "start", "o3")
	in.waitLogs("o3", "OVERRIDE bye kept /etc")
	in.ok("vm", "rm", "-f", "o1", "o2", "o3")

	// Mistakes: one line each, and no VM.
	in.fails("want KEY=VALUE", append([]string{"vm", "create", "--name", "bad", "-e", "=x"}, shape...)...)
	in.fails("want an absolute path", append([]string{"vm", "create", "--name", "bad", "-w", "tmp"}, shape...)...)
	in.fails("UNSET_HERE is not set here", append([]string{"vm", "create", "--name", "bad", "-e", "UNSET_HERE"}, shape...)...)
	if r := in.run(append([]string{"vm", "create", "--name", "bad", "stray"}, shape...)...); r.code == 0 || !strings.Contains(r.stderr, "goes after `--`") {
		t.Errorf("vm create with a stray argument: exit %d, %q", r.code, r.stderr)
	}
	var vms []vmJSON
	in.jsonOut(&vms, "vm", "ls", "--json")
	if len(vms) != 0 {
		t.Errorf("VMs left after the mistakes: %+v", vms)
	}
}
