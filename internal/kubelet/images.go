package kubelet

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"banger/internal/api"
)

// pullImage finds or pulls the container's image as its pull policy
// says, retrying with back-off (ErrImagePull, then ImagePullBackOff,
// as the kubelet reports them) until it has it or the pod goes.
func (p *Provider) pullImage(ctx context.Context, pr *podRun) (*api.Image, bool) {
	pod := pr.podCopy()
	c := pod.Spec.Containers[0]
	backoff := p.backoff
	for {
		img, err := p.image(ctx, pod, c)
		if err == nil {
			p.set(pr, func(pr *podRun) { pr.imageID = img.Digest })
			return img, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		var never errNeverPull
		if errors.As(err, &never) {
			p.event(pr, corev1.EventTypeWarning, "ErrImageNeverPull", "%v", err)
			p.waiting(pr, "ErrImageNeverPull", err.Error())
		} else {
			p.event(pr, corev1.EventTypeWarning, "Failed", "Failed to pull image %q: %v", c.Image, err)
			p.waiting(pr, "ErrImagePull", err.Error())
		}
		if !sleep(ctx, min(backoff, p.backoff)) {
			return nil, false
		}
		p.event(pr, corev1.EventTypeNormal, "BackOff", "Back-off pulling image %q", c.Image)
		p.waiting(pr, "ImagePullBackOff", fmt.Sprintf("Back-off pulling image %q: %v", c.Image, err))
		if !sleep(ctx, backoff) {
			return nil, false
		}
		backoff = min(2*backoff, p.backoffMax)
	}
}

type errNeverPull struct{ ref string }

func (e errNeverPull) Error() string {
	return fmt.Sprintf("image %q is not on this node and imagePullPolicy is Never: pull it with `banger image pull`, or change the policy", e.ref)
}

// image is the banger image for ref: one named ref (an image a user
// imported or built under that name), or one pulled from ref; pulled
// now when the policy says so.
func (p *Provider) image(ctx context.Context, pod *corev1.Pod, c corev1.Container) (*api.Image, error) {
	ref := c.Image
	policy := c.ImagePullPolicy
	if policy != corev1.PullAlways {
		imgs, err := p.bc.Images(ctx)
		if err != nil {
			return nil, err
		}
		full := ""
		if r, err := name.ParseReference(ref); err == nil {
			full = r.Name()
		}
		for i := range imgs {
			if imgs[i].Name == ref || (full != "" && imgs[i].Ref == full) {
				return &imgs[i], nil
			}
		}
		if policy == corev1.PullNever {
			return nil, errNeverPull{ref}
		}
	}
	auth, err := p.pullAuth(ctx, pod, ref)
	if err != nil {
		return nil, err
	}
	pr := p.lookup(pod.Namespace, pod.Name)
	if pr != nil {
		p.event(pr, corev1.EventTypeNormal, "Pulling", "Pulling image %q", ref)
	}
	img, err := p.bc.PullImage(ctx, api.PullRequest{Ref: ref, Auth: auth}, nil)
	if err != nil {
		return nil, err
	}
	if pr != nil {
		p.event(pr, corev1.EventTypeNormal, "Pulled", "Pulled image %q as %s (%s)", ref, img.Name, img.Digest)
	}
	return img, nil
}

// pullAuth is the registry login for ref from the pod's
// imagePullSecrets (kubernetes.io/dockerconfigjson or dockercfg), nil
// when none names ref's registry.
func (p *Provider) pullAuth(ctx context.Context, pod *corev1.Pod, ref string) (*api.RegistryAuth, error) {
	if len(pod.Spec.ImagePullSecrets) == 0 {
		return nil, nil
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	host := r.Context().RegistryStr()
	for _, ls := range pod.Spec.ImagePullSecrets {
		sec, err := p.k8s.CoreV1().Secrets(pod.Namespace).Get(ctx, ls.Name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("imagePullSecret %s: %w", ls.Name, err)
		}
		if a := dockerAuth(sec, host); a != nil {
			return a, nil
		}
	}
	return nil, nil
}

// dockerAuth is the login a Docker config secret holds for host.
func dockerAuth(sec *corev1.Secret, host string) *api.RegistryAuth {
	type entry struct {
		Username, Password, Auth string
		IdentityToken            string `json:"identitytoken"`
	}
	var auths map[string]entry
	switch sec.Type {
	case corev1.SecretTypeDockerConfigJson:
		var cfg struct{ Auths map[string]entry }
		if json.Unmarshal(sec.Data[corev1.DockerConfigJsonKey], &cfg) != nil {
			return nil
		}
		auths = cfg.Auths
	case corev1.SecretTypeDockercfg:
		if json.Unmarshal(sec.Data[corev1.DockerConfigKey], &auths) != nil {
			return nil
		}
	default:
		return nil
	}
	for k, e := range auths {
		k = strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
		k, _, _ = strings.Cut(k, "/")
		if k != host && !(host == name.DefaultRegistry && (k == "docker.io" || k == "index.docker.io")) {
			continue
		}
		a := &api.RegistryAuth{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}
		if e.Auth != "" {
			if b, err := base64.StdEncoding.DecodeString(e.Auth); err == nil {
				a.Username, a.Password, _ = strings.Cut(string(b), ":")
			}
		}
		return a
	}
	return nil
}
