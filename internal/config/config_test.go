package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMissingFileIsDefaults(t *testing.T) {
	l, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if err != nil || l.Path != "" || l.Config.VCPU != 2 || l.Source["vcpu"] != "default" || l.DefaultImage != "debian" || l.Value("console_log_max") != "4M" {
		t.Fatalf("Load = %+v, %v", l, err)
	}
}

func TestValuesAndSources(t *testing.T) {
	p := write(t, "# banger\ndefault_image = \"alpine\"\nvcpu = 4\nconsole_log_max = \"1M\"\n[net]\nsubnet = \"10.9.0.0/24\"\ndns_upstream = [\"127.0.0.1:5353\"]\n\n[firecracker]\njailer = \"/usr/local/bin/jailer\"\n")
	l, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if l.DefaultImage != "alpine" || l.VCPU != 4 || l.ConsoleLogMax != "1M" || l.Net.Subnet != "10.9.0.0/24" || l.Memory != "1G" || l.Firecracker.Jailer != "/usr/local/bin/jailer" {
		t.Errorf("config = %+v", l.Config)
	}
	for key, want := range map[string]string{"default_image": p + ":2", "vcpu": p + ":3", "console_log_max": p + ":4", "net.subnet": p + ":6", "net.dns_upstream": p + ":7", "firecracker.jailer": p + ":10", "memory": "default"} {
		if l.Source[key] != want {
			t.Errorf("source of %s = %q, want %q", key, l.Source[key], want)
		}
	}
	if l.Value("net.dns_upstream") != "127.0.0.1:5353" || l.Value("vcpu") != "4" {
		t.Errorf("values: %q %q", l.Value("net.dns_upstream"), l.Value("vcpu"))
	}
}

func TestErrorsNameTheLine(t *testing.T) {
	for body, want := range map[string]string{
		"vcpu = 2\nmemory = \"lots\"\n":          ":2: memory: \"lots\"",
		"vcpu = 0\n":                             ":1: vcpu: 0: use 1 to 32",
		"\n\nvmm = \"kvmtool\"\n":                ":3: vmm:",
		"[net]\nsubnet = \"10.0.0.0/33\"\n":      ":2: net.subnet:",
		"colour = \"blue\"\n":                    ":1: unknown setting \"colour\"",
		"[net]\nbrige = \"br0\"\n":               ":2: unknown setting \"net.brige\"",
		"vcpu = \n":                              ":1:",
		"network = \"bridge\"\n":                 ":1: network:",
		"[firecracker]\njailer_uid = 0\n":        ":2: firecracker.jailer_uid:",
		"[net]\ndns_upstream = [\"dns.google\"]": ":2: net.dns_upstream:",
		"console_log_max = \"1K\"\n":             ":1: console_log_max: \"1K\": a size of at least 64K",
		"console_log_max = \"lots\"\n":           ":1: console_log_max:",
	} {
		p := write(t, body)
		_, err := Load(p)
		if err == nil || !strings.Contains(err.Error(), p+want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %v, want one line with %q", body, err, p+want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512M": 512 << 20, "8G": 8 << 30, "1T": 1 << 40, "4096": 4096, "2Gi": 2 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"x", "-1G", "0"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}
