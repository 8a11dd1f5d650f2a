package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"banger/internal/testenv"
)

// TestOwnersOnOneHost is the story as two real users of one host
// play it: alice shares a secret directory with her VM; bob, in the same
// group, tries every verb on it (through the CLI and the raw API, the
// agent upgrade included) and gets "no VM of yours" each time, reads and
// writes none of her files, and sees none of her things; root sees both
// users' VMs with their owners; [limits] stops a user at vms = 2.
func TestOwnersOnOneHost(t *testing.T) {
	testenv.RequireRoot(t)
	alice, bob := testUser(t, "banger-alice"), testUser(t, "banger-bob")
	in := newInstance(t)
	os.WriteFile(in.path("config.toml"), []byte("[limits]\nvms = 2\n"), 0o644)
	vmFixtures(t, in)
	in.shareWithGroup()

	secret := filepath.Join(alice.home, "secret")
	os.RemoveAll(secret)
	os.Mkdir(secret, 0o700)
	os.WriteFile(filepath.Join(secret, "token"), []byte("alice-token\n"), 0o600)
	for _, p := range []string{secret, filepath.Join(secret, "token")} {
		os.Chown(p, alice.uid, alice.gid)
	}
	t.Cleanup(func() { os.RemoveAll(secret) })

	shape := []string{"--image", "bb", "--kernel", "k", "--vcpu", "1", "--memory", "256M", "--disk-size", "128M", "--vmm", "qemu", "--network", "none"}
	if r := in.runAs(alice, append([]string{"vm", "create", "--name", "alicevm", "-v", secret + ":/s"}, shape...)...); r.code != 0 {
		t.Fatalf("alice's create: %d %s", r.code, r.stderr)
	}
	if r := in.runAs(alice, "vm", "exec", "alicevm", "--", "cat", "/s/token"); r.code != 0 || r.stdout != "alice-token\n" {
		t.Fatalf("alice reads her own token: %d %q %q", r.code, r.stdout, r.stderr)
	}

	// Every verb bob tries on alice's VM, and the same for a VM that
	// does not exist: the same line, naming nothing of hers.
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	verbs := [][]string{
		{"vm", "show", "V"}, {"vm", "exec", "V", "--", "cat", "/s/token"},
		{"vm", "exec", "V", "--", "sh", "-c", "echo x > /s/planted"},
		{"vm", "cp", "V:/s/token", dir}, {"vm", "cp", "/etc/hostname", "V:/s/planted"},
		{"vm", "ports", "V"}, {"vm", "logs", "V"}, {"vm", "ssh", "V", "--", "true"},
		{"vm", "stop", "V"}, {"vm", "start", "V"}, {"vm", "kill", "V"}, {"vm", "restart", "V"},
		{"vm", "rm", "-f", "V"}, {"vm", "pause", "V"}, {"vm", "resume", "V"},
		{"vm", "snapshot", "V"}, {"vm", "fork", "V"}, {"vm", "policy", "V", "--reset"},
	}
	for _, verb := range verbs {
		theirs := in.runAs(bob, subst(verb, "alicevm")...)
		none := in.runAs(bob, subst(verb, "novm")...)
		// (fork takes a snapshot or a VM: "no snapshot or VM … of yours")
		if theirs.code == 0 || !strings.Contains(theirs.stderr, `"alicevm" of yours`) {
			t.Errorf("bob: banger %s: exit %d, %q", strings.Join(subst(verb, "alicevm"), " "), theirs.code, theirs.stderr)
			continue
		}
		if strings.ReplaceAll(theirs.stderr, "alicevm", "X") != strings.ReplaceAll(none.stderr, "novm", "X") {
			t.Errorf("bob: banger %s tells alice's VM from none: %q vs %q", strings.Join(verb, " "), theirs.stderr, none.stderr)
		}
	}
	// The raw API, the agent upgrade included.
	sock := in.path("run", "bangerd.sock")
	for _, req := range [][]string{
		{"-H", "Connection: Upgrade", "-H", "Upgrade: banger-agent/1", "http://bangerd/v1/vms/alicevm/agent"},
		{"http://bangerd/v1/vms/alicevm"},
		{"-X", "POST", "http://bangerd/v1/vms/alicevm/kill"},
		{"-X", "DELETE", "http://bangerd/v1/vms/alicevm?force=1"},
		{"http://bangerd/v1/vms/alicevm/logs"},
	} {
		cmd := exec.Command("curl", append([]string{"-s", "--unix-socket", sock, "-w", " %{http_code}"}, req...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(bob.uid), Gid: uint32(bob.gid), Groups: bob.groups}}
		out, _ := cmd.Output()
		if !strings.HasSuffix(string(out), " 404") || !strings.Contains(string(out), "of yours") {
			t.Errorf("bob: curl %v: %s", req, out)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(secret, "token")); string(b) != "alice-token\n" {
		t.Errorf("alice's token changed: %q", b)
	}
	if ents, _ := os.ReadDir(secret); len(ents) != 1 {
		t.Errorf("bob planted files in alice's directory: %v", ents)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("bob copied alice's files: %v", ents)
	}

	// What each sees.
	if r := in.runAs(bob, "vm", "ls", "-q"); r.code != 0 || strings.TrimSpace(r.stdout) != "" {
		t.Errorf("bob's vm ls: %q", r.stdout)
	}
	// An empty list is the hint alone, on its own line (it ran into the
	// table's header where both streams were shown together).
	if r := in.runAs(bob, "vm", "ls"); r.code != 0 || r.stdout != "" || r.stderr != "no VMs yet: `banger vm create --image IMAGE`\n" {
		t.Errorf("bob's empty vm ls: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	if r := in.runAs(bob, "vm", "prune"); r.code != 0 {
		t.Errorf("bob's prune: %s", r.stderr)
	}
	if r := in.runAs(bob, append([]string{"vm", "create", "--name", "bobvm"}, shape...)...); r.code != 0 {
		t.Fatalf("bob's create: %s", r.stderr)
	}
	if r := in.runAs(bob, append([]string{"vm", "create", "--name", "alicevm"}, shape...)...); r.code == 0 || !strings.Contains(r.stderr, `the VM name "alicevm" is taken`) || strings.Contains(r.stderr, "banger-alice") {
		t.Errorf("bob takes alice's name: %q", r.stderr)
	}
	owners := map[string]string{}
	var raw []map[string]any
	json.Unmarshal([]byte(in.ok("vm", "ls", "--json")), &raw)
	for _, v := range raw {
		owners[v["name"].(string)] = v["owner_name"].(string)
		if int(v["owner"].(float64)) == 0 {
			t.Errorf("VM %v has no owner", v["name"])
		}
	}
	if owners["alicevm"] != "banger-alice" || owners["bobvm"] != "banger-bob" {
		t.Errorf("root's vm ls: %v", owners)
	}
	if table := in.ok("vm", "ls"); !strings.HasPrefix(table, "OWNER") || !strings.Contains(table, "banger-bob") {
		t.Errorf("root's vm ls table: %q", table)
	}
	if r := in.runAs(alice, "vm", "ls"); strings.Contains(r.stdout, "bobvm") || strings.HasPrefix(r.stdout, "OWNER") {
		t.Errorf("alice's vm ls: %q", r.stdout)
	}

	// [limits] vms = 2: her third is refused, in one line, and nothing of
	// it is left.
	if r := in.runAs(alice, append([]string{"vm", "create", "--no-start", "--name", "alice2"}, shape...)...); r.code != 0 {
		t.Fatalf("alice's second VM: %s", r.stderr)
	}
	in.failsAs(alice, "[limits] vms = 2 per user, and you have 2", append([]string{"vm", "create", "--no-start", "--name", "alice3"}, shape...)...)
	if names := in.vmNames(); strings.Contains(strings.Join(names, ","), "alice3") {
		t.Errorf("a refused create left alice3: %v", names)
	}
	in.ok("vm", "rm", "-f", "alicevm", "alice2", "bobvm")
}

// subst puts name where args have V (a whole argument, or VM:PATH's V).
func subst(args []string, name string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		switch {
		case a == "V":
			out[i] = name
		case strings.HasPrefix(a, "V:"):
			out[i] = name + a[1:]
		default:
			out[i] = a
		}
	}
	return out
}
