package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// agentSandbox is agent-sandbox's controller and CRDs
// (sigs.k8s.io/agent-sandbox v1.0.1), built by
// scripts/agent-sandbox-controller.sh.
func agentSandbox(t testing.TB) string {
	return cachedBuild(t, "BANGER_AGENT_SANDBOX", "/var/cache/banger-test/agent-sandbox-v1.0.1",
		"agent-sandbox controller", "scripts/agent-sandbox-controller.sh", " (.ci/run does)")
}

// TestKubeAgentSandbox runs agent-sandbox's own controller against the
// control plane: a Sandbox (agents.x-k8s.io/v1beta1) whose pod
// tolerates banger's taint becomes a microVM on a banger node, the
// Sandbox turns Ready, and kubectl exec reaches into it.
func TestKubeAgentSandbox(t *testing.T) {
	dir := agentSandbox(t)
	kn := newKubeCluster(t, 1)
	k := kn.k
	k.ok("apply", "-f", filepath.Join(dir, "crds"))
	k.ok("wait", "--for=condition=established", "--timeout=60s", "crd/sandboxes.agents.x-k8s.io")
	ctrl := exec.Command(filepath.Join(dir, "agent-sandbox-controller"), "--leader-elect=false",
		"--metrics-bind-address=0", "--health-probe-bind-address=0")
	ctrl.Env = append(os.Environ(), "KUBECONFIG="+k.env["KUBECONFIG"])
	logf, _ := os.Create(filepath.Join(t.TempDir(), "controller.log"))
	ctrl.Stdout, ctrl.Stderr = logf, logf
	if err := ctrl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctrl.Process.Kill()
		ctrl.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("agent-sandbox-controller's log:\n%s", tail(string(b), 20000))
		}
	})
	k.apply(`apiVersion: agents.x-k8s.io/v1beta1
kind: Sandbox
metadata:
  name: agent
spec:
  podTemplate:
    spec:
      tolerations:
      - {key: virtual-kubelet.io/provider, operator: Equal, value: banger, effect: NoSchedule}
      containers:
      - name: agent
        image: ` + kn.image + `
        imagePullPolicy: IfNotPresent
        command: ["/bin/sh", "-c", "echo sandbox up; exec sleep 100000"]
`)
	waitFor(t, 4*time.Minute, "Sandbox agent Ready", func() (bool, string) {
		out, err := k.kubectl("get", "sandbox", "agent", "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status} {.status.conditions[?(@.type=='Ready')].message}")
		if err != nil {
			return false, err.Error()
		}
		return strings.HasPrefix(out, "True"), out
	})
	p := k.pod("agent")
	if p.Spec.NodeName != "bn1" || p.Status.Phase != "Running" {
		t.Fatalf("the Sandbox's pod: %+v", p)
	}
	if out, err := k.kubectl("exec", "agent", "--", "sh", "-c", "echo inside $(hostname)"); err != nil || !strings.HasPrefix(out, "inside ") {
		t.Errorf("exec into the Sandbox's pod: %q %v", out, err)
	}
	if vms := podVMs(t, kn.in1); len(vms) != 1 || vms[0].Labels["banger.dev/pod-name"] != "agent" {
		t.Errorf("the Sandbox's VM: %+v", vms)
	}
	k.ok("delete", "sandbox", "agent", "--wait=true")
	waitFor(t, 2*time.Minute, "the Sandbox's pod and VM gone", func() (bool, string) {
		out, _ := k.kubectl("get", "pods", "--no-headers")
		return strings.TrimSpace(out) == "" && len(podVMs(t, kn.in1)) == 0, out
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
