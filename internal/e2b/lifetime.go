package e2b

import (
	"context"
	"errors"
	"time"

	"banger/internal/store"
)

// Expiry: a running sandbox past its end is removed, or paused when it
// was created with autoPause. A paused sandbox does not expire (connect
// resumes it, kill removes it), as in E2B.

// retryAfter is how long a failed expiry waits before the next try.
const retryAfter = 30 * time.Second

// Run expires sandboxes until ctx ends. It wakes at the nearest end and
// whenever one changes.
func (s *Service) Run(ctx context.Context) {
	failed := map[string]time.Time{} // expiries that failed, and when to try again
	for {
		next := s.expire(ctx, failed)
		d := time.Until(next)
		if d < 0 {
			d = 0
		}
		if d > time.Minute {
			d = time.Minute
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// expire acts on every sandbox past its end and returns the next end.
func (s *Service) expire(ctx context.Context, failed map[string]time.Time) time.Time {
	now := time.Now()
	next := now.Add(time.Minute)
	for _, sb := range s.records() {
		if at, ok := failed[sb.ID]; ok && now.Before(at) {
			if at.Before(next) {
				next = at
			}
			continue
		}
		if sb.EndAt.After(now) {
			if sb.EndAt.Before(next) {
				next = sb.EndAt
			}
			continue
		}
		if err := s.expireOne(ctx, sb); err != nil {
			s.log.Warn("expiring an E2B sandbox", "sandbox", sb.ID, "err", err)
			failed[sb.ID] = now.Add(retryAfter)
			continue
		}
		delete(failed, sb.ID)
	}
	return next
}

// expireOne removes (or pauses) sb, whose end has passed.
func (s *Service) expireOne(ctx context.Context, sb sandbox) error {
	c, err := callerOf(sb.Owner)
	if err != nil {
		// Its owner is gone from the host: nobody can reach it; the
		// VM stays for root to remove.
		s.drop(ctx, sb.ID)
		return err
	}
	v, err := s.vms.Get(ctx, c, sb.ID)
	if errors.Is(err, store.ErrNotFound) {
		s.drop(ctx, sb.ID)
		return nil
	}
	if err != nil {
		return err
	}
	if v.State != "running" && !sb.Creating {
		// Paused (or stopped): no end until it runs again. The end is
		// pushed out so the reaper does not look again every pass.
		sb.EndAt = time.Now().Add(24 * time.Hour)
		return s.put(ctx, &sb)
	}
	if sb.OnTimeout == "pause" && !sb.Creating {
		if _, err := s.vms.Pause(ctx, c, sb.ID); err != nil {
			return err
		}
		s.log.Info("e2b sandbox paused at its timeout", "sandbox", sb.ID)
		sb.EndAt = time.Now().Add(24 * time.Hour)
		return s.put(ctx, &sb)
	}
	s.log.Info("e2b sandbox expired", "sandbox", sb.ID)
	return s.remove(ctx, c, sb.ID)
}
