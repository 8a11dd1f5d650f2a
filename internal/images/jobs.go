package images

import (
	"context"
	"fmt"
	"sync"
	"time"

	"banger/internal/api"
)

// Job is one pull or build under way; every request for the same image
// name and source (ref: a reference, or "mmdebstrap SPEC") shares it. Its
// work runs on a context that ends when the last follower leaves.
type Job struct {
	name, ref string
	run       func(*Job) (*api.Image, error)
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	// message goes with the result (a pull that found nothing to do).
	message string

	mu      sync.Mutex
	subs    map[chan api.Event]struct{}
	waiters int
	img     *api.Image
	err     error
	// first is the first follower's subscription, made before the
	// work starts so that it sees every event.
	first chan api.Event
}

// doneJob is a job that had nothing to do: its result is img.
func doneJob(img api.Image, message string) *Job {
	j := &Job{done: make(chan struct{}), img: &img, message: message, cancel: func() {}}
	close(j.done)
	return j
}

// publish fans a progress event out to every follower without
// blocking: a slow client misses progress lines, never the result.
func (j *Job) publish(ev api.Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for ch := range j.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

func (j *Job) join() chan api.Event {
	ch := make(chan api.Event, 64)
	j.mu.Lock()
	j.subs[ch] = struct{}{}
	j.waiters++
	j.mu.Unlock()
	return ch
}

// leave drops a follower; the last one to leave before the job finishes
// cancels it, so a Ctrl-C on the only client stops the work.
func (j *Job) leave(ch chan api.Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.subs, ch)
	j.waiters--
	if j.waiters == 0 {
		j.cancel()
	}
}

// Follow sends the job's progress to emit until it ends, and returns its
// image (and a message about it, such as "image is up to date") or its
// error. When ctx ends first (the client went), it leaves the job and
// returns ctx's error; the last follower to leave cancels the job.
func (j *Job) Follow(ctx context.Context, emit func(api.Event)) (*api.Image, string, error) {
	if j.subs == nil { // doneJob
		return j.img, j.message, nil
	}
	j.mu.Lock()
	sub := j.first
	j.first = nil
	j.mu.Unlock()
	if sub == nil {
		sub = j.join()
	}
	for {
		select {
		case ev := <-sub:
			emit(ev)
		case <-j.done:
			j.mu.Lock()
			delete(j.subs, sub)
			j.mu.Unlock()
			for len(sub) > 0 {
				emit(<-sub)
			}
			return j.img, j.message, j.err
		case <-ctx.Done():
			j.leave(sub)
			return nil, "", context.Cause(ctx)
		}
	}
}

// startOrJoin returns the job making name from ref, started with run
// when there is none.
func (s *Service) startOrJoin(name, ref string, run func(*Job) (*api.Image, error)) (*Job, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pruning {
		return nil, fmt.Errorf("%w: the blob cache is being pruned: pull again in a moment", api.ErrConflict)
	}
	if s.building[name] {
		return nil, fmt.Errorf("%w: image %q is being imported: wait for it or use another --name", api.ErrConflict, name)
	}
	if job := s.pulls[name]; job != nil {
		if job.ref != ref {
			return nil, fmt.Errorf("%w: image %q is being made from %s: wait for it or use another --name", api.ErrConflict, name, job.ref)
		}
		return job, nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	job := &Job{name: name, ref: ref, run: run, ctx: ctx, cancel: cancel, done: make(chan struct{}), subs: map[chan api.Event]struct{}{}}
	job.first = job.join()
	s.pulls[name] = job
	s.jobs.Add(1)
	go s.runJob(job)
	return job, nil
}

func (s *Service) runJob(job *Job) {
	defer s.jobs.Done()
	defer job.cancel()
	start := time.Now()
	img, err := job.run(job)
	s.mu.Lock()
	delete(s.pulls, job.name)
	s.mu.Unlock()
	job.mu.Lock()
	job.img, job.err = img, err
	job.mu.Unlock()
	close(job.done)
	if err != nil {
		s.d.Log.Warn("image failed", "image", job.name, "from", job.ref, "err", err)
		return
	}
	s.d.Log.Info("image made", "image", job.name, "from", job.ref, "digest", img.Digest, "duration", time.Since(start))
}
