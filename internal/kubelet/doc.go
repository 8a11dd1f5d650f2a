// Package kubelet makes a banger host a Kubernetes node: a
// virtual-kubelet provider whose pods are microVMs. The scheduler places
// pods; each pod this node gets becomes one VM of the local bangerd,
// reached only through the public client (banger/client), so the node
// is one more caller of the daemon's API, held to its owner checks and
// [limits] like any user.
//
// What it does: registers the Node (honest capacity, banger's taint,
// the podCIDR made the VM subnet), renews its Lease and says NotReady
// with the reason while bangerd does not answer; turns a pod into a
// VMCreateRequest (podvm.go); supervises the container's command
// through the guest agent (exit codes, restart policies with back-off,
// logs kept on the host); serves exec, attach, logs and port-forward on
// the kubelet port; adopts its VMs again after a restart, by label.
//
// What it does not: volumes (but for the VM's own disk), probes,
// ephemeral and init containers, more than one container a pod, or
// Services (no kube-proxy: pods reach each other by pod IP).
package kubelet
