package e2b

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"

	"banger/internal/vsockagent"
)

// envd's HTTP endpoints: /files (download, upload), /envs. Contents
// stream through the agent both ways; nothing is held whole in memory.

// filesStatus maps an agent failure on /files to envd's status.
func filesStatus(err error) int {
	var ae *vsockagent.AgentError
	if errors.As(err, &ae) {
		switch ae.Code {
		case vsockagent.CodeNotFound:
			return http.StatusNotFound
		case vsockagent.CodeIsDir, vsockagent.CodeNotDir, vsockagent.CodeInvalid:
			return http.StatusBadRequest
		case vsockagent.CodeNoUser:
			return http.StatusUnauthorized
		case vsockagent.CodeNoSpace:
			return http.StatusInsufficientStorage
		case vsockagent.CodeDenied:
			return http.StatusForbidden
		}
		return http.StatusInternalServerError
	}
	return http.StatusBadGateway
}

func filesErr(w http.ResponseWriter, err error, user, p string) {
	st := filesStatus(err)
	msg := err.Error()
	switch st {
	case http.StatusNotFound:
		msg = fmt.Sprintf("path '%s' does not exist", p)
	case http.StatusUnauthorized:
		msg = fmt.Sprintf("error looking up user '%s': unknown user", user)
	}
	writeJSON(w, st, apiErr{Code: st, Message: msg})
}

// download is GET /files?path=P&username=U: the file's bytes.
func (s *Service) download(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p, user := q.Get("path"), q.Get("username")
	if user == "" {
		user = DefaultUser
	}
	var rc io.ReadCloser
	err := s.asUser(r.Context(), user, func(sess *vsockagent.Session) (err error) {
		rc, err = vsockagent.ReadFile(r.Context(), sess, p, user)
		return err
	})
	if err != nil {
		filesErr(w, err, user, p)
		return
	}
	defer rc.Close()
	// A file that fits in the first read gets a length (the SDK reads
	// "" for an empty file by it); a larger one streams.
	head := make([]byte, 64<<10)
	n, rerr := io.ReadFull(rc, head)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("inline", map[string]string{"filename": path.Base(p)}))
	if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.WriteHeader(http.StatusOK)
		w.Write(head[:n])
		return
	}
	if rerr != nil {
		filesErr(w, rerr, user, p)
		return
	}
	w.WriteHeader(http.StatusOK)
	w.Write(head[:n])
	if _, err := io.Copy(w, rc); err != nil {
		// The status is sent: cutting the body short is all that is
		// left to say it failed.
		s.log.Warn("e2b: a download broke off", "path", p, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// written is one uploaded file in /files' answer.
type written struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// upload is POST /files: a multipart form of "file" parts (each named by
// ?path=, else by its file name, a full path), or one file's bytes
// (application/octet-stream, maybe gzip'd) for ?path=.
func (s *Service) upload(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p, user := q.Get("path"), q.Get("username")
	if user == "" {
		user = DefaultUser
	}
	put := func(dst string, body io.Reader) (written, error) {
		var e vsockagent.Entry
		err := s.asUser(r.Context(), user, func(sess *vsockagent.Session) (err error) {
			e, err = vsockagent.WriteFile(r.Context(), sess, dst, user, body)
			return err
		})
		return written{Path: e.Path, Name: e.Name, Type: "file"}, err
	}
	var out []written
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct != "multipart/form-data" {
		if p == "" {
			writeJSON(w, http.StatusBadRequest, apiErr{Code: 400, Message: "path is required for an upload that is not multipart"})
			return
		}
		var body io.Reader = r.Body
		if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, apiErr{Code: 400, Message: fmt.Sprintf("reading the gzip'd body: %v", err)})
				return
			}
			defer zr.Close()
			body = zr
		}
		e, err := put(p, body)
		if err != nil {
			filesErr(w, err, user, p)
			return
		}
		writeJSON(w, http.StatusOK, []written{e})
		return
	}
	mr, err := r.MultipartReader()
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiErr{Code: 400, Message: fmt.Sprintf("reading the multipart form: %v", err)})
		return
	}
	seen := map[string]bool{}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiErr{Code: 400, Message: fmt.Sprintf("reading the multipart form: %v", err)})
			return
		}
		if part.FormName() != "file" {
			part.Close()
			continue
		}
		dst := p
		if dst == "" {
			// The part's file name is a whole path: read it raw
			// (FileName keeps only its last element).
			_, params, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
			dst = params["filename"]
		}
		if dst == "" {
			writeJSON(w, http.StatusBadRequest, apiErr{Code: 400, Message: "a file part has no path: give ?path= or a file name"})
			return
		}
		if seen[dst] {
			writeJSON(w, http.StatusBadRequest, apiErr{Code: 400, Message: fmt.Sprintf("you cannot upload multiple files to the same path '%s' in one upload request", dst)})
			return
		}
		seen[dst] = true
		e, err := put(dst, part)
		part.Close()
		if err != nil {
			filesErr(w, err, user, dst)
			return
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		writeJSON(w, http.StatusBadRequest, apiErr{Code: 400, Message: "no file in the upload: send multipart parts named \"file\""})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// envs is GET /envs: the sandbox's environment variables.
func (s *Service) envs(w http.ResponseWriter, r *http.Request) {
	sb := envdOf(r.Context()).sb
	out := map[string]string{}
	for k, v := range sb.EnvVars {
		out[k] = v
	}
	for _, kv := range sandboxEnv(sb, DefaultUser)[:3] {
		k, v, _ := cutEnv(kv)
		out[k] = v
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}
