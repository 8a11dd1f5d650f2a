package vm

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"banger/internal/api"
)

func TestRunSpec(t *testing.T) {
	img := api.Image{Name: "app", Config: api.ImageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"serve"},
		Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/app", User: "app"}}
	for _, c := range []struct {
		name      string
		run       *api.Run
		argv, env []string
		dir, user string
	}{
		{"none", nil, []string{"/entry", "serve"}, []string{"PATH=/bin", "A=1"}, "/app", "app"},
		{"cmd", &api.Run{Cmd: []string{"debug"}}, []string{"/entry", "debug"}, []string{"PATH=/bin", "A=1"}, "/app", "app"},
		{"entrypoint drops the cmd", &api.Run{Entrypoint: []string{"/bin/sh"}}, []string{"/bin/sh"}, []string{"PATH=/bin", "A=1"}, "/app", "app"},
		{"both", &api.Run{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo"}}, []string{"/bin/sh", "-c", "echo"}, []string{"PATH=/bin", "A=1"}, "/app", "app"},
		{"env over", &api.Run{Env: []string{"A=2", "B=3"}, WorkingDir: "/w", User: "0"}, []string{"/entry", "serve"}, []string{"PATH=/bin", "A=2", "B=3"}, "/w", "0"},
		{"supervised: no command, the rest kept", &api.Run{Entrypoint: []string{"/bin/sh"}, Env: []string{"B=3"}, WorkingDir: "/w", Supervised: true}, nil, []string{"PATH=/bin", "A=1", "B=3"}, "/w", "app"},
	} {
		s := runSpec(api.VM{Run: c.run}, img)
		if argv := s.Argv(); !(len(argv) == 0 && len(c.argv) == 0) && !reflect.DeepEqual(argv, c.argv) || !reflect.DeepEqual(s.Env, c.env) || s.WorkingDir != c.dir || s.User != c.user || s.Image != "app" {
			t.Errorf("%s: %+v", c.name, s)
		}
	}
	if img.Config.Env[1] != "A=1" {
		t.Errorf("the image's environment was changed: %v", img.Config.Env)
	}
}

func TestCheckRun(t *testing.T) {
	for _, c := range []struct {
		run  *api.Run
		want string
	}{
		{nil, ""},
		{&api.Run{Cmd: []string{"echo", ""}, Env: []string{"A=", "B=c=d"}, WorkingDir: "/x", User: "1000:1000"}, ""},
		{&api.Run{Env: []string{"=x"}}, "want KEY=VALUE"},
		{&api.Run{Env: []string{"NOVALUE"}}, "want KEY=VALUE"},
		{&api.Run{WorkingDir: "rel"}, "absolute"},
		{&api.Run{Cmd: []string{"a\x00b"}}, "NUL"},
		{&api.Run{User: "a\nb"}, "one line"},
		{&api.Run{Entrypoint: []string{""}}, "empty"},
		{&api.Run{Env: []string{"BIG=" + strings.Repeat("x", maxRunBytes)}}, "more than"},
	} {
		err := checkRun(c.run)
		if c.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.run, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%+v: %v, want invalid: …%s…", c.run, err, c.want)
		}
	}
}
