package kubelet

import (
	"strings"
	"testing"
)

// The apiserver's rate as the kubelet's own defaults (client-go's 5 a
// second held pods' Running back), and a negative one refused in one
// line.
func TestConfigAPIRate(t *testing.T) {
	c := Config{NodeName: "n"}
	if err := c.defaults(); err != nil {
		t.Fatal(err)
	}
	if c.APIQPS != 50 || c.APIBurst != 100 {
		t.Fatalf("defaults: qps %g burst %d, want 50 and 100", c.APIQPS, c.APIBurst)
	}
	c = Config{Kubeconfig: "k", ClientCAFile: "ca", NodeIP: "10.0.0.1", Port: 10250, APIQPS: 20, APIBurst: 40}
	if err := c.Validate(); err != nil {
		t.Fatalf("a valid config: %v", err)
	}
	c.APIQPS = -1
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "--kube-api-qps -1") || strings.Count(err.Error(), "\n") != 0 {
		t.Fatalf("a negative rate: %v", err)
	}
}
