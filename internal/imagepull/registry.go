package imagepull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"banger/internal/system"
	"banger/internal/version"
)

// This file is the registry side of a pull: references, resolving an
// image for linux/amd64, registry errors in words, and blob requests.

// repoPathRE is the distribution spec's repository name grammar.
var repoPathRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)

// ParseReference parses an image reference the way banger and Docker do:
// short names resolve on Docker Hub ("alpine" is
// index.docker.io/library/alpine:latest), and registries on loopback are
// spoken to over plain HTTP.
func ParseReference(ref string) (name.Reference, error) {
	if strings.TrimSpace(ref) == "" {
		return nil, fmt.Errorf("%w: empty reference", ErrBadReference)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrBadReference, ref, err)
	}
	// The registry library accepts empty path components ("/bars/big",
	// "a//b", "a/"), which would be sent to a registry as they are; the
	// distribution spec does not allow them.
	if repo := r.Context().RepositoryStr(); !repoPathRE.MatchString(repo) {
		return nil, fmt.Errorf("%w %q: repository %q must be lowercase components joined by single slashes, like library/alpine or acme/devbox", ErrBadReference, ref, repo)
	}
	host := r.Context().RegistryStr()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" || net.ParseIP(host).IsLoopback() {
		return name.ParseReference(ref, name.Insecure)
	}
	return r, nil
}

// FamiliarName is the short form of a reference a person would type:
// "alpine:3.20" for index.docker.io/library/alpine:3.20,
// "ghcr.io/o/r:1" elsewhere.
func FamiliarName(r name.Reference) string {
	repo := r.Context().RepositoryStr()
	reg := r.Context().RegistryStr()
	var s string
	if reg == name.DefaultRegistry {
		s = strings.TrimPrefix(repo, "library/")
	} else {
		s = reg + "/" + repo
	}
	switch t := r.(type) {
	case name.Tag:
		return s + ":" + t.TagStr()
	case name.Digest:
		return s + "@" + t.DigestStr()
	}
	return s
}

func (p *Puller) remoteOptions(ctx context.Context, ref name.Reference, auth *authn.AuthConfig) []remote.Option {
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(p.transport),
		remote.WithUserAgent("banger/" + version.Version),
		// Fail fast on a dead registry; the default waits seconds.
		remote.WithRetryBackoff(remote.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 3}),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}),
	}
	if auth != nil {
		opts = append(opts, remote.WithAuth(authn.FromConfig(*auth)))
	} else {
		opts = append(opts, remote.WithAuthFromKeychain(p.keychain))
	}
	return opts
}

// Resolve returns the fully qualified reference and the manifest digest of
// the linux/amd64 image behind ref, without fetching layers.
func (p *Puller) Resolve(ctx context.Context, ref string, auth *authn.AuthConfig) (string, string, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return "", "", err
	}
	img, err := p.image(ctx, r, auth)
	if err != nil {
		return "", "", err
	}
	d, err := img.Digest()
	if err != nil {
		return "", "", registryError(r, err)
	}
	return r.Name(), d.String(), nil
}

func (p *Puller) image(ctx context.Context, r name.Reference, auth *authn.AuthConfig) (v1.Image, error) {
	desc, err := remote.Get(r, p.remoteOptions(ctx, r, auth)...)
	if err != nil {
		return nil, registryError(r, err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, registryError(r, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, registryError(r, err)
		}
		var found []string
		for _, m := range im.Manifests {
			if m.Platform == nil {
				continue
			}
			if m.Platform.OS == "linux" && m.Platform.Architecture == "amd64" {
				img, err := idx.Image(m.Digest)
				if err != nil {
					return nil, registryError(r, err)
				}
				return img, nil
			}
			if m.Platform.OS != "unknown" { // attestation manifests
				found = append(found, m.Platform.OS+"/"+m.Platform.Architecture)
			}
		}
		return nil, fmt.Errorf("%w: %s offers only %s; banger runs linux/amd64 guests, pick a tag built for amd64",
			ErrNoPlatform, FamiliarName(r), strings.Join(found, ", "))
	}
	img, err := desc.Image()
	if err != nil {
		return nil, registryError(r, err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, registryError(r, err)
	}
	if (cfg.OS != "" && cfg.OS != "linux") || (cfg.Architecture != "" && cfg.Architecture != "amd64") {
		return nil, fmt.Errorf("%w: %s is built for %s/%s only; banger runs linux/amd64 guests, pick a tag built for amd64",
			ErrNoPlatform, FamiliarName(r), cfg.OS, cfg.Architecture)
	}
	return img, nil
}

// registryError turns an error from the registry client into one line
// that says what went wrong and what to do.
func registryError(r name.Reference, err error) error {
	reg := r.Context().RegistryStr()
	var terr *transport.Error
	if errors.As(err, &terr) {
		for _, d := range terr.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return fmt.Errorf("%w: %s does not exist in %s: check the repository name and tag", ErrNotFound, FamiliarName(r), reg)
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("%w: %s refused access to %s (%s): run `docker login %s` or fix its entry in ~/.docker/config.json",
					ErrAuth, reg, r.Context().RepositoryStr(), d.Code, reg)
			}
		}
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %s answered HTTP %d for %s: run `docker login %s` or fix its entry in ~/.docker/config.json",
				ErrAuth, reg, terr.StatusCode, r.Context().RepositoryStr(), reg)
		case http.StatusNotFound:
			return fmt.Errorf("%w: %s does not exist in %s: check the repository name and tag", ErrNotFound, FamiliarName(r), reg)
		}
		return fmt.Errorf("registry %s answered HTTP %d for %s: try again later", reg, terr.StatusCode, FamiliarName(r))
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return fmt.Errorf("%w: cannot reach %s (%v): check the address, that the registry runs, and your network", ErrUnreachable, reg, opErr.Err)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Errorf("%w: cannot resolve %s: check the registry name and your DNS", ErrUnreachable, dnsErr.Name)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("talking to registry %s: %s", reg, system.Tail(err.Error(), 300))
}

// blobClient returns an HTTP client authorised to pull blobs of r's
// repository. Blobs are fetched with it directly rather than through the
// registry library's layer type, which would hash every byte a second
// time; BlobCache.Put verifies size and digest itself.
func (p *Puller) blobClient(ctx context.Context, r name.Reference, auth *authn.AuthConfig) (*http.Client, error) {
	repo := r.Context()
	var authr authn.Authenticator
	if auth != nil {
		authr = authn.FromConfig(*auth)
	} else {
		var err error
		if authr, err = p.keychain.Resolve(repo); err != nil {
			return nil, fmt.Errorf("%w: reading credentials for %s: %v", ErrAuth, repo.RegistryStr(), err)
		}
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, authr, p.transport, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, registryError(r, err)
	}
	return &http.Client{Transport: rt}, nil
}

func openBlob(ctx context.Context, c *http.Client, r name.Reference, digest string) (io.ReadCloser, error) {
	repo := r.Context()
	u := url.URL{Scheme: repo.Scheme(), Host: repo.RegistryStr(), Path: "/v2/" + repo.RepositoryStr() + "/blobs/" + digest}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, registryError(r, err)
	}
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		resp.Body.Close()
		return nil, registryError(r, err)
	}
	return resp.Body, nil
}
