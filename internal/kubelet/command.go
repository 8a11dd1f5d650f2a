package kubelet

// The pod's command: started (or attached to) through the guest
// agent, watched, restarted as the restart policy says, and stopped.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"banger/client"
	"banger/internal/api"
	"banger/internal/vsockagent"
)

// restarts says whether policy starts the command again after it
// exited with code.
func restarts(policy corev1.RestartPolicy, code int32) bool {
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	return true
}

// supervise starts the command (or attaches to the one running: an
// adopted or forked VM), keeps its output, and acts on its end as the
// restart policy says, until the pod goes. fresh is the VM makeVM has
// just made (nil when adopted or forked).
func (p *Provider) supervise(ctx context.Context, pr *podRun, fresh *madeVM) {
	pod := pr.podCopy()
	c := pod.Spec.Containers[0]
	rec := p.loadRecord(pr)
	pr.mu.Lock()
	pr.restarts = rec.Restarts
	if pr.user == "" {
		pr.user = RunAsUser(pod, c)
	}
	pr.mu.Unlock()
	if pr.adopt && (pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed) {
		// It ended before the restart: keep what Kubernetes has.
		p.set(pr, func(pr *podRun) {
			pr.phase, pr.reason, pr.message = pod.Status.Phase, pod.Status.Reason, pod.Status.Message
			pr.ip = pod.Status.PodIP
			for _, cs := range pod.Status.ContainerStatuses {
				pr.waiting, pr.running, pr.terminated = nil, nil, cs.State.Terminated
				if pr.terminated == nil {
					pr.terminated = &corev1.ContainerStateTerminated{Reason: "Unknown", ExitCode: 255}
				}
			}
		})
		return
	}
	backoff := p.backoff
	for {
		if ctx.Err() != nil {
			return
		}
		v, err := p.vmUp(ctx, pr, fresh)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.log.Warn("pod's VM unavailable", "vm", pr.vm, "err", err)
			if client.IsNotFound(err) {
				p.fail(pr, "VMGone", fmt.Sprintf("VM %s was removed outside Kubernetes", pr.vm))
				return
			}
			p.waiting(pr, "VMUnavailable", err.Error())
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, p.backoffMax)
			continue
		}
		p.set(pr, func(pr *podRun) { pr.ip, pr.vmRunning = v.IP, true })
		ran := time.Now()
		exit, err := p.runCommand(ctx, pr, c, fresh)
		fresh = nil // it was: a restart finds the VM as it is then
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The agent session broke before the exit was known: the VM
			// stopped (killed outside Kubernetes: the command died with
			// it, and the restart policy says what next), or bangerd
			// went away (the command runs on: attach again).
			p.log.Warn("lost the pod's command", "vm", pr.vm, "err", err)
			if !sleep(ctx, time.Second) {
				return
			}
			v, verr := p.bc.VM(ctx, pr.vm)
			if verr != nil || v.State == "running" {
				continue
			}
			exit = vsockagent.Exit{Code: 137, Signal: "SIGKILL", Error: fmt.Sprintf("VM %s stopped outside Kubernetes (it is %s)", pr.vm, v.State)}
			p.event(pr, corev1.EventTypeWarning, "VMStopped", "VM %s stopped outside Kubernetes (it is %s)", pr.vm, v.State)
			p.set(pr, func(pr *podRun) { pr.vmRunning = false })
		}
		code := int32(exit.Code)
		reason := "Completed"
		if code != 0 {
			reason = "Error"
		}
		msg := exit.Error
		if exit.Signal != "" && msg == "" {
			msg = "killed by " + exit.Signal
		}
		p.set(pr, func(pr *podRun) {
			var startedAt metav1.Time
			if pr.running != nil {
				startedAt = pr.running.StartedAt
			}
			pr.running, pr.waiting, pr.pid = nil, nil, 0
			pr.terminated = &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason, Message: msg, StartedAt: startedAt,
				FinishedAt: metav1.Now(), ContainerID: "banger://" + pr.vm}
			close(pr.runEnded)
			pr.runEnded = make(chan struct{})
		})
		pod = pr.podCopy()
		if !restarts(pod.Spec.RestartPolicy, code) {
			phase := corev1.PodSucceeded
			if code != 0 {
				phase = corev1.PodFailed
			}
			p.set(pr, func(pr *podRun) { pr.phase = phase })
			// Nothing runs in the VM any more: give its memory and CPUs
			// back, keep its disk until the pod goes.
			sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			if _, err := p.bc.VMAction(sctx, pr.vm, "stop", nil); err != nil && ctx.Err() == nil {
				p.log.Warn("stopping a finished pod's VM", "vm", pr.vm, "err", err)
			}
			cancel()
			p.set(pr, func(pr *podRun) { pr.vmRunning = false })
			return
		}
		if time.Since(ran) > 10*time.Minute {
			backoff = p.backoff
		}
		p.event(pr, corev1.EventTypeWarning, "BackOff", "Back-off %s restarting the command of VM %s (exit %d)", backoff, pr.vm, code)
		p.set(pr, func(pr *podRun) {
			pr.last, pr.terminated = pr.terminated, nil
			pr.waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting the command (exit %d)", backoff, code)}
		})
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, p.backoffMax)
		pr.mu.Lock()
		pr.restarts++
		rec.Restarts = pr.restarts
		pr.mu.Unlock()
		p.saveRecord(pr, rec)
	}
}

// vmUp is pr's VM, started when it is not running (a VM killed outside
// Kubernetes whose pod restarts); fresh's when makeVM has just made it.
func (p *Provider) vmUp(ctx context.Context, pr *podRun, fresh *madeVM) (*api.VM, error) {
	if fresh != nil {
		return fresh.vm, nil
	}
	v, err := p.bc.VM(ctx, pr.vm)
	if err != nil {
		return nil, err
	}
	if v.State == "running" {
		return v, nil
	}
	p.set(pr, func(pr *podRun) { pr.vmRunning = false })
	p.event(pr, corev1.EventTypeNormal, "Starting", "Starting VM %s (it was %s)", pr.vm, v.State)
	return p.bc.VMAction(ctx, pr.vm, "start", nil)
}

// runCommand runs the container's command once: it attaches to the
// one running in the VM (tagged MainTag) or starts it, writes its
// output to this run's log, and returns its exit. An error means the
// agent session broke (bangerd restarted, the VM died) before the exit
// was known.
func (p *Provider) runCommand(ctx context.Context, pr *podRun, c corev1.Container, fresh *madeVM) (vsockagent.Exit, error) {
	s, err := p.bc.Agent(ctx, pr.vm)
	if err != nil {
		return vsockagent.Exit{}, err
	}
	defer s.Close()
	var st *vsockagent.Stream
	pid := 0
	var procs []vsockagent.ProcInfo
	if fresh == nil {
		// A VM just made runs no command yet: nothing to attach to.
		if procs, err = vsockagent.Procs(ctx, s); err != nil {
			return vsockagent.Exit{}, err
		}
	}
	for _, proc := range procs {
		if proc.Tag == MainTag {
			if st, err = vsockagent.Attach(ctx, s, proc.PID); err == nil {
				pid = proc.PID
			}
			break
		}
	}
	attached := st != nil
	if !attached {
		req, err := p.commandRequest(ctx, pr, c, fresh)
		if err != nil {
			return vsockagent.Exit{}, err
		}
		pid, st, err = vsockagent.StartDetached(ctx, s, req)
		if err != nil {
			var ae *vsockagent.AgentError
			if errors.As(err, &ae) {
				// A missing user or directory: the command cannot run.
				return vsockagent.Exit{Code: 128, Error: ae.Message}, nil
			}
			return vsockagent.Exit{}, err
		}
	}
	defer st.Close()
	pr.mu.Lock()
	restarts := pr.restarts
	pr.mu.Unlock()
	lw, err := openLog(p.logPath(pr, restarts), p.maxLog)
	if err != nil {
		return vsockagent.Exit{}, fmt.Errorf("opening the pod's log: %w", err)
	}
	defer lw.Close()
	if pid == 0 {
		// Not found or not executable: st carries 127 or 126.
		e, err := st.Wait(ctx)
		if e.Error != "" {
			lw.stream("stderr").Write([]byte(e.Error + "\n"))
		}
		return e, err
	}
	if !attached {
		p.event(pr, corev1.EventTypeNormal, "Started", "Started the command in VM %s (pid %d)", pr.vm, pid)
	}
	p.set(pr, func(pr *podRun) {
		pr.pid = pid
		started := metav1.Now()
		if attached && pr.pod.Status.ContainerStatuses != nil {
			for _, cs := range pr.pod.Status.ContainerStatuses {
				if cs.State.Running != nil {
					started = cs.State.Running.StartedAt
				}
			}
		}
		pr.waiting, pr.terminated = nil, nil
		pr.running = &corev1.ContainerStateRunning{StartedAt: started}
		pr.phase, pr.reason, pr.message = corev1.PodRunning, "", ""
	})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(lw.stream("stdout"), st) }()
	go func() { defer wg.Done(); io.Copy(lw.stream("stderr"), st.Stderr()) }()
	e, err := st.Wait(ctx)
	wg.Wait()
	return e, err
}

// commandRequest is the exec that starts the container's command: its
// argv by Kubernetes' rules over the image's, as its user, with the
// pod's addresses for the fields only known now. fresh, when not nil,
// is the VM and image config as makeVM just had them.
func (p *Provider) commandRequest(ctx context.Context, pr *podRun, c corev1.Container, fresh *madeVM) (vsockagent.Request, error) {
	if fresh == nil {
		v, err := p.bc.VM(ctx, pr.vm)
		if err != nil {
			return vsockagent.Request{}, err
		}
		fresh = &madeVM{vm: v}
		if img, err := p.bc.Image(ctx, v.Image); err == nil {
			fresh.cfg = img.Config
		}
	}
	v, cfg := fresh.vm, fresh.cfg
	env, err := p.podEnv(ctx, pr.podCopy(), c, v.IP)
	if err != nil {
		return vsockagent.Request{}, err
	}
	argv := expandAll(Argv(c, cfg), env)
	pr.mu.Lock()
	user := pr.user
	pr.mu.Unlock()
	if user == "" {
		user = cfg.User
	}
	stdin := c.Stdin
	return vsockagent.Request{Argv: argv, Env: env, User: user, TTY: c.TTY, Stdin: &stdin, Tag: MainTag}, nil
}

// stop ends pr: its goroutine first, then its command (SIGTERM, and
// SIGKILL with the VM after grace), then its VM.
func (p *Provider) stop(pr *podRun, grace time.Duration) error {
	pr.cancel()
	select {
	case <-pr.done:
	case <-time.After(15 * time.Minute):
		return fmt.Errorf("pod %s's VM is still being made after 15 minutes: try again", pr.vm)
	}
	pr.mu.Lock()
	pid := pr.pid
	pr.mu.Unlock()
	if pid != 0 && grace > 0 {
		p.event(pr, corev1.EventTypeNormal, "Killing", "Stopping the command in VM %s (grace %s)", pr.vm, grace)
		p.terminate(pr, pid, grace)
	}
	p.removeVM(pr)
	p.set(pr, func(pr *podRun) {
		pr.vmRunning, pr.pid = false, 0
		if pr.terminated == nil {
			var startedAt metav1.Time
			if pr.running != nil {
				startedAt = pr.running.StartedAt
			}
			pr.terminated = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "Killed", StartedAt: startedAt, FinishedAt: metav1.Now(),
				Message: "the pod was deleted"}
		}
		pr.running, pr.waiting = nil, nil
		if pr.phase == corev1.PodPending || pr.phase == corev1.PodRunning {
			pr.phase = corev1.PodFailed
			if pr.terminated.ExitCode == 0 {
				pr.phase = corev1.PodSucceeded
			}
		}
	})
	return nil
}

// terminate sends the command SIGTERM and waits up to grace for it to
// end, recording its exit.
func (p *Provider) terminate(pr *podRun, pid int, grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	s, err := p.bc.Agent(ctx, pr.vm)
	if err != nil {
		return
	}
	defer s.Close()
	st, err := vsockagent.Attach(ctx, s, pid)
	if err != nil {
		return
	}
	defer st.Close()
	go io.Copy(io.Discard, st)
	go io.Copy(io.Discard, st.Stderr())
	if err := vsockagent.SignalProcess(ctx, s, pid, 15); err != nil {
		return
	}
	e, err := st.Wait(ctx)
	if err != nil {
		return
	}
	p.set(pr, func(pr *podRun) {
		var startedAt metav1.Time
		if pr.running != nil {
			startedAt = pr.running.StartedAt
		}
		reason := "Completed"
		if e.Code != 0 {
			reason = "Error"
		}
		pr.terminated = &corev1.ContainerStateTerminated{ExitCode: int32(e.Code), Reason: reason, StartedAt: startedAt, FinishedAt: metav1.Now()}
		pr.running = nil
	})
}

// podRecord is what a pod keeps on the host between restarts of
// banger-kubelet: its restart count.
