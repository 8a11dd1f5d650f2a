package e2b

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"banger/internal/e2b/envd/filesystem"
	"banger/internal/vsockagent"
)

// filesystemService is envd's filesystem.Filesystem over the agent's
// file system ops. The agent acts as root and gives what it makes to
// the user, as envd does.
type filesystemService struct{ s *Service }

// entryInfo is an agent entry as envd's EntryInfo.
func entryInfo(e vsockagent.Entry) *filesystem.EntryInfo {
	out := &filesystem.EntryInfo{Name: e.Name, Path: e.Path, Size: e.Size, Mode: e.Mode, Permissions: e.Permissions,
		Owner: e.Owner, Group: e.Group, ModifiedTime: timestamppb.New(time.Unix(0, e.MtimeNs))}
	switch e.Type {
	case vsockagent.TypeFile:
		out.Type = filesystem.FileType_FILE_TYPE_FILE
	case vsockagent.TypeDir:
		out.Type = filesystem.FileType_FILE_TYPE_DIRECTORY
	case vsockagent.TypeSymlink:
		out.Type = filesystem.FileType_FILE_TYPE_SYMLINK
	}
	if e.SymlinkTarget != "" {
		t := e.SymlinkTarget
		out.SymlinkTarget = &t
	}
	return out
}

func (f *filesystemService) Stat(ctx context.Context, req *connect.Request[filesystem.StatRequest]) (*connect.Response[filesystem.StatResponse], error) {
	user := userOf(req.Header())
	var e vsockagent.Entry
	err := f.s.asUser(ctx, user, func(sess *vsockagent.Session) (err error) {
		e, err = vsockagent.Stat(ctx, sess, req.Msg.GetPath(), user)
		return err
	})
	if err != nil {
		return nil, rpcErr(err, user)
	}
	return connect.NewResponse(&filesystem.StatResponse{Entry: entryInfo(e)}), nil
}

func (f *filesystemService) MakeDir(ctx context.Context, req *connect.Request[filesystem.MakeDirRequest]) (*connect.Response[filesystem.MakeDirResponse], error) {
	user := userOf(req.Header())
	var e vsockagent.Entry
	err := f.s.asUser(ctx, user, func(sess *vsockagent.Session) (err error) {
		e, err = vsockagent.MakeDir(ctx, sess, req.Msg.GetPath(), user)
		return err
	})
	if err != nil {
		return nil, rpcErr(err, user)
	}
	return connect.NewResponse(&filesystem.MakeDirResponse{Entry: entryInfo(e)}), nil
}

func (f *filesystemService) Move(ctx context.Context, req *connect.Request[filesystem.MoveRequest]) (*connect.Response[filesystem.MoveResponse], error) {
	user := userOf(req.Header())
	var e vsockagent.Entry
	err := f.s.asUser(ctx, user, func(sess *vsockagent.Session) (err error) {
		e, err = vsockagent.Move(ctx, sess, req.Msg.GetSource(), req.Msg.GetDestination(), user)
		return err
	})
	if err != nil {
		return nil, rpcErr(err, user)
	}
	return connect.NewResponse(&filesystem.MoveResponse{Entry: entryInfo(e)}), nil
}

func (f *filesystemService) ListDir(ctx context.Context, req *connect.Request[filesystem.ListDirRequest]) (*connect.Response[filesystem.ListDirResponse], error) {
	user := userOf(req.Header())
	depth := int(req.Msg.GetDepth())
	if depth == 0 {
		depth = 1
	}
	var es []vsockagent.Entry
	err := f.s.asUser(ctx, user, func(sess *vsockagent.Session) (err error) {
		es, err = vsockagent.ListDir(ctx, sess, req.Msg.GetPath(), user, depth)
		return err
	})
	if err != nil {
		return nil, rpcErr(err, user)
	}
	out := &filesystem.ListDirResponse{Entries: make([]*filesystem.EntryInfo, 0, len(es))}
	for _, e := range es {
		out.Entries = append(out.Entries, entryInfo(e))
	}
	return connect.NewResponse(out), nil
}

func (f *filesystemService) Remove(ctx context.Context, req *connect.Request[filesystem.RemoveRequest]) (*connect.Response[filesystem.RemoveResponse], error) {
	user := userOf(req.Header())
	err := f.s.asUser(ctx, user, func(sess *vsockagent.Session) error {
		return vsockagent.Remove(ctx, sess, req.Msg.GetPath(), user)
	})
	if err != nil {
		return nil, rpcErr(err, user)
	}
	return connect.NewResponse(&filesystem.RemoveResponse{}), nil
}

// eventType maps the agent's watch ops to envd's event types (0 for
// what envd has no type for: an overflow).
func eventType(op string) filesystem.EventType {
	switch op {
	case "create":
		return filesystem.EventType_EVENT_TYPE_CREATE
	case "write":
		return filesystem.EventType_EVENT_TYPE_WRITE
	case "remove":
		return filesystem.EventType_EVENT_TYPE_REMOVE
	case "rename":
		return filesystem.EventType_EVENT_TYPE_RENAME
	case "chmod":
		return filesystem.EventType_EVENT_TYPE_CHMOD
	}
	return filesystem.EventType_EVENT_TYPE_UNSPECIFIED
}

// watch starts an agent watch of path as user, made with ctx (which
// bounds it).
func (f *filesystemService) watch(ctx context.Context, user, path string, recursive bool) (*vsockagent.Watch, error) {
	var w *vsockagent.Watch
	err := f.s.asUser(ctx, user, func(sess *vsockagent.Session) (err error) {
		w, err = vsockagent.WatchDir(ctx, sess, path, user, recursive)
		return err
	})
	return w, err
}

func (f *filesystemService) WatchDir(ctx context.Context, req *connect.Request[filesystem.WatchDirRequest], stream *connect.ServerStream[filesystem.WatchDirResponse]) error {
	user := userOf(req.Header())
	w, err := f.watch(ctx, user, req.Msg.GetPath(), req.Msg.GetRecursive())
	if err != nil {
		return rpcErr(err, user)
	}
	defer w.Close()
	if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Start{Start: &filesystem.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	type next struct {
		ev  vsockagent.WatchEvent
		err error
	}
	events := make(chan next)
	go func() {
		for {
			ev, err := w.Next()
			select {
			case events <- next{ev, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	every := keepalive(req.Header())
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case n := <-events:
			if n.err != nil {
				return rpcErr(n.err, user)
			}
			t := eventType(n.ev.Op)
			if t == filesystem.EventType_EVENT_TYPE_UNSPECIFIED {
				continue
			}
			if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Filesystem{Filesystem: &filesystem.FilesystemEvent{Name: n.ev.Name, Type: t}}}); err != nil {
				return err
			}
			tick.Reset(every)
		case <-tick.C:
			if err := stream.Send(&filesystem.WatchDirResponse{Event: &filesystem.WatchDirResponse_Keepalive{Keepalive: &filesystem.WatchDirResponse_KeepAlive{}}}); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// pollWatcher is a watch whose events wait to be fetched
// (CreateWatcher, GetWatcherEvents, RemoveWatcher).
type pollWatcher struct {
	cancel context.CancelFunc
	mu     sync.Mutex
	events []*filesystem.FilesystemEvent
	err    error
}

// maxPolled bounds what a watcher nobody polls holds: past it the
// oldest events go.
const maxPolled = 10000

// maxWatchers bounds the polled watchers of one sandbox.
const maxWatchers = 64

func (p *pollWatcher) close() { p.cancel() }

func (f *filesystemService) CreateWatcher(ctx context.Context, req *connect.Request[filesystem.CreateWatcherRequest]) (*connect.Response[filesystem.CreateWatcherResponse], error) {
	user := userOf(req.Header())
	e := envdOf(ctx)
	rt := f.s.runtime(e.sb.ID)
	rt.mu.Lock()
	n := len(rt.watchers)
	rt.mu.Unlock()
	if n >= maxWatchers {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("sandbox %s has %d watchers: remove some (RemoveWatcher)", e.sb.ID, n))
	}
	// The watch outlives this request: it ends with RemoveWatcher, or
	// with the sandbox.
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w, err := f.watch(wctx, user, req.Msg.GetPath(), req.Msg.GetRecursive())
	if err != nil {
		cancel()
		return nil, rpcErr(err, user)
	}
	pw := &pollWatcher{cancel: func() { cancel(); w.Close() }}
	id := newToken(8)
	rt.mu.Lock()
	rt.watchers[id] = pw
	rt.mu.Unlock()
	go func() {
		for {
			ev, err := w.Next()
			pw.mu.Lock()
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					pw.err = err
				}
				pw.mu.Unlock()
				return
			}
			if t := eventType(ev.Op); t != filesystem.EventType_EVENT_TYPE_UNSPECIFIED {
				if len(pw.events) == maxPolled {
					pw.events = pw.events[1:]
				}
				pw.events = append(pw.events, &filesystem.FilesystemEvent{Name: ev.Name, Type: t})
			}
			pw.mu.Unlock()
		}
	}()
	return connect.NewResponse(&filesystem.CreateWatcherResponse{WatcherId: id}), nil
}

func (f *filesystemService) watcher(ctx context.Context, id string) (*runtime, *pollWatcher, error) {
	rt := f.s.runtime(envdOf(ctx).sb.ID)
	rt.mu.Lock()
	defer rt.mu.Unlock()
	pw := rt.watchers[id]
	if pw == nil {
		return rt, nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher with id %s not found", id))
	}
	return rt, pw, nil
}

func (f *filesystemService) GetWatcherEvents(ctx context.Context, req *connect.Request[filesystem.GetWatcherEventsRequest]) (*connect.Response[filesystem.GetWatcherEventsResponse], error) {
	_, pw, err := f.watcher(ctx, req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	pw.mu.Lock()
	events, werr := pw.events, pw.err
	pw.events = nil
	pw.mu.Unlock()
	if len(events) == 0 && werr != nil {
		return nil, rpcErr(werr, "")
	}
	return connect.NewResponse(&filesystem.GetWatcherEventsResponse{Events: events}), nil
}

func (f *filesystemService) RemoveWatcher(ctx context.Context, req *connect.Request[filesystem.RemoveWatcherRequest]) (*connect.Response[filesystem.RemoveWatcherResponse], error) {
	rt, pw, err := f.watcher(ctx, req.Msg.GetWatcherId())
	if err != nil {
		return nil, err
	}
	pw.close()
	rt.mu.Lock()
	delete(rt.watchers, req.Msg.GetWatcherId())
	rt.mu.Unlock()
	return connect.NewResponse(&filesystem.RemoveWatcherResponse{}), nil
}
