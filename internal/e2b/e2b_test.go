package e2b

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"banger/internal/api"
	"banger/internal/config"
	"banger/internal/store"
	"banger/internal/vm"
	"banger/internal/vsockagent"
)

func TestPolicyFor(t *testing.T) {
	no := false
	for _, tc := range []struct {
		name        string
		n           *networkConfig
		internet    *bool
		allow, deny []string
		bad         bool
	}{
		{name: "nothing", n: nil},
		{name: "allow alone restricts nothing", n: &networkConfig{AllowOut: []string{"1.1.1.1"}}},
		{name: "deny all but", n: &networkConfig{AllowOut: []string{"1.1.1.1", "example.com"}, DenyOut: []string{"0.0.0.0/0"}}, allow: []string{"1.1.1.1", "example.com"}},
		{name: "no internet", internet: &no, n: &networkConfig{AllowOut: []string{"8.8.8.8"}}, allow: []string{"8.8.8.8"}},
		{name: "no internet, nothing allowed", internet: &no, allow: nil, deny: nil},
		{name: "partial deny", n: &networkConfig{DenyOut: []string{"10.0.0.0/8", "8.8.8.8"}}, deny: []string{"10.0.0.0/8", "8.8.8.8/32"}},
		{name: "a hole in a deny", n: &networkConfig{AllowOut: []string{"10.0.0.1"}, DenyOut: []string{"10.0.0.0/30"}}, deny: []string{"10.0.0.0/32", "10.0.0.2/31"}},
		{name: "an allow covering a deny", n: &networkConfig{AllowOut: []string{"10.0.0.0/8"}, DenyOut: []string{"10.1.0.0/16"}}},
		{name: "a name denied", n: &networkConfig{DenyOut: []string{"example.com"}}, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			allow, deny, err := policyFor(tc.n, tc.internet)
			if tc.bad {
				if !errors.Is(err, api.ErrInvalid) {
					t.Fatalf("err = %v, want invalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// "no internet, nothing allowed" denies everything: a closed
			// policy with nothing in it is banger's deny of 0.0.0.0/0.
			if tc.name == "no internet, nothing allowed" {
				if allow != nil || deny != nil {
					t.Fatalf("= %v %v", allow, deny)
				}
				return
			}
			if !slices.Equal(allow, tc.allow) || !slices.Equal(deny, tc.deny) {
				t.Errorf("= allow %v deny %v, want %v %v", allow, deny, tc.allow, tc.deny)
			}
		})
	}
}

func TestParseMetadata(t *testing.T) {
	// What the SDK sends for {"a b": "c&d", app: "x=y"}: each part
	// encoded, the pairs encoded by URLSearchParams, and the whole
	// encoded once more as the query's value.
	q := url.Values{"metadata": {"a%2520b=c%2526d&app=x%253Dy"}}.Encode()
	v, _ := url.ParseQuery(q)
	md, err := parseMetadata(v.Get("metadata"))
	if err != nil || md["a b"] != "c&d" || md["app"] != "x=y" || len(md) != 2 {
		t.Fatalf("= %v %v", md, err)
	}
	if _, err := parseMetadata("a=b=c"); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("a=b=c: %v", err)
	}
	if !matches(map[string]string{"a": "1", "b": "2"}, map[string]string{"a": "1"}) || matches(nil, map[string]string{"a": "1"}) {
		t.Error("matches")
	}
}

func TestTarget(t *testing.T) {
	for _, tc := range []struct {
		host   string
		header map[string]string
		id     string
		port   int
		ok     bool
	}{
		{host: "127.0.0.1:3000", ok: false},
		{host: "api.e2b.test", ok: false},
		{host: "8080-iabc123.e2b.test", id: "iabc123", port: 8080, ok: true},
		{host: "49983-iabc123.e2b.test:3000", id: "iabc123", port: 49983, ok: true},
		{host: "127.0.0.1:3000", header: map[string]string{"E2b-Sandbox-Id": "ix", "E2b-Sandbox-Port": "49983"}, id: "ix", port: 49983, ok: true},
		{host: "127.0.0.1:3000", header: map[string]string{"E2b-Sandbox-Id": "ix"}, id: "ix", port: EnvdPort, ok: true},
		{host: "127.0.0.1:3000", header: map[string]string{"E2b-Sandbox-Id": "ix", "E2b-Sandbox-Port": "x"}, id: "ix", port: -1, ok: true},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = tc.host
		for k, v := range tc.header {
			r.Header.Set(k, v)
		}
		id, port, ok := target(r)
		if id != tc.id || port != tc.port || ok != tc.ok {
			t.Errorf("%s %v: = %q %d %v, want %q %d %v", tc.host, tc.header, id, port, ok, tc.id, tc.port, tc.ok)
		}
	}
}

func TestEndEvent(t *testing.T) {
	e := endEvent(vsockagent.Exit{})
	if e.ExitCode != 0 || !e.Exited || e.Status != "exit status 0" || e.Error != nil {
		t.Errorf("exit 0: %v", e)
	}
	e = endEvent(vsockagent.Exit{Code: 3})
	if e.ExitCode != 3 || e.GetError() != "exit status 3" {
		t.Errorf("exit 3: %v", e)
	}
	e = endEvent(vsockagent.Exit{Code: 137, Signal: "SIGKILL"})
	if e.ExitCode != -1 || e.Exited || e.Status != "signal: killed" || e.GetError() != "signal: killed" {
		t.Errorf("SIGKILL: %v", e)
	}
}

func TestNewID(t *testing.T) {
	re := regexp.MustCompile(`^i[a-z0-9]{19}$`)
	seen := map[string]bool{}
	for range 1000 {
		id := newID()
		if !re.MatchString(id) || seen[id] {
			t.Fatalf("id %q", id)
		}
		seen[id] = true
		if err := vm.ValidateName(id); err != nil {
			t.Fatalf("id %q is no VM name: %v", id, err)
		}
	}
}

// newTestService is the endpoint over a real store, with no VMs.
func newTestService(t *testing.T) *Service {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s, err := New(context.Background(), Deps{Store: st, Config: config.E2B{Listen: "127.0.0.1:3000"}, DefaultImage: "debian"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestKeys: a key works as X-API-Key for its owner only while it
// exists; others are 401; users list and remove only their own.
func TestKeys(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	me := vm.Caller{UID: os.Getuid()}
	k, err := s.CreateKey(ctx, me, api.E2BKeyRequest{Name: "mine"})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^e2b_[0-9a-f]{40}$`).MatchString(k.Key) || k.APIURL != "http://127.0.0.1:3000" || k.Prefix != k.Key[:10] {
		t.Fatalf("key %+v", k)
	}
	auth := func(key string) (int, error) {
		r := httptest.NewRequest("GET", "/v2/sandboxes", nil)
		if key != "" {
			r.Header.Set("X-API-Key", key)
		}
		_, c, err := s.authenticate(r)
		return c.UID, err
	}
	if uid, err := auth(k.Key); err != nil || uid != me.UID {
		t.Fatalf("the key: uid %d, %v", uid, err)
	}
	for _, bad := range []string{"", "e2b_0000000000000000000000000000000000000000", k.Key + "x"} {
		if _, err := auth(bad); !errors.Is(err, errUnauthorized) {
			t.Errorf("key %q: %v, want unauthorized", bad, err)
		}
	}
	// The control plane answers 401 with E2B's body.
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/v2/sandboxes", nil)
	s.Handler().ServeHTTP(w, r)
	if w.Code != http.StatusUnauthorized || !regexp.MustCompile(`^\{"code":401,"message":".*banger e2b key create`).MatchString(w.Body.String()) {
		t.Errorf("no key: %d %s", w.Code, w.Body)
	}
	// A key whose owner left group banger reaches nothing (the daemon's
	// check, asked at each request), and works again when they are back.
	left := true
	s.allowed = func(uid, gid int) string {
		if left {
			return "is not in group banger"
		}
		return ""
	}
	if _, err := auth(k.Key); !errors.Is(err, errUnauthorized) {
		t.Errorf("the key of a user out of group banger: %v, want unauthorized", err)
	}
	left = false
	if _, err := auth(k.Key); err != nil {
		t.Errorf("the key once its user is back in group banger: %v", err)
	}
	other := vm.Caller{UID: me.UID + 4242}
	if ks, _ := s.Keys(ctx, other); len(ks) != 0 {
		t.Errorf("another user lists %v", ks)
	}
	if _, err := s.RemoveKey(ctx, other, k.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("another user removed the key: %v", err)
	}
	if ks, _ := s.Keys(ctx, vm.Caller{Admin: true}); len(ks) != 1 || ks[0].Key != "" {
		t.Errorf("admin lists %+v (no key text)", ks)
	}
	if _, err := s.RemoveKey(ctx, me, "mine"); err != nil {
		t.Fatal(err)
	}
	if _, err := auth(k.Key); !errors.Is(err, errUnauthorized) {
		t.Errorf("a removed key: %v", err)
	}
}

// TestEnvdUnknownSandbox: envd's API of a sandbox that is not there is
// E2B's 502, which the SDK reads as a sandbox that timed out.
func TestEnvdUnknownSandbox(t *testing.T) {
	s := newTestService(t)
	w := httptest.NewRecorder()
	r := httptest.NewRequest("GET", "/health", nil)
	r.Header.Set("E2b-Sandbox-Id", "inope")
	s.Handler().ServeHTTP(w, r)
	if w.Code != http.StatusBadGateway || !regexp.MustCompile(`"sandboxId":"inope"`).MatchString(w.Body.String()) {
		t.Errorf("= %d %s", w.Code, w.Body)
	}
}
