package kubelet

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The container's environment, resolved here rather than by
// virtual-kubelet, which refuses fields known only once the pod runs
// (status.podIP): a pod's VM has its address once it exists, and the
// command starts after. ConfigMaps and Secrets are read through the
// API (the Node authorizer lets a node read those its pods name).

// errConfig is a pod's configuration that names what does not exist:
// the kubelet's CreateContainerConfigError, tried again later.
type errConfig struct{ msg string }

func (e errConfig) Error() string { return e.msg }

// podEnv is c's environment as KEY=VALUE (sorted), with the fields of
// status: the pod's and node's addresses ("" before they are known).
func (p *Provider) podEnv(ctx context.Context, pod *corev1.Pod, c corev1.Container, podIP string) ([]string, error) {
	env := map[string]string{}
	cms := map[string]*corev1.ConfigMap{}
	secs := map[string]*corev1.Secret{}
	configMap := func(name string, optional bool) (*corev1.ConfigMap, error) {
		if cm, ok := cms[name]; ok {
			return cm, nil
		}
		cm, err := p.k8s.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && optional {
			cm, err = nil, nil
		} else if apierrors.IsNotFound(err) {
			return nil, errConfig{fmt.Sprintf("configmap %q not found", name)}
		}
		if err != nil {
			return nil, err
		}
		cms[name] = cm
		return cm, nil
	}
	secret := func(name string, optional bool) (*corev1.Secret, error) {
		if s, ok := secs[name]; ok {
			return s, nil
		}
		s, err := p.k8s.CoreV1().Secrets(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && optional {
			s, err = nil, nil
		} else if apierrors.IsNotFound(err) {
			return nil, errConfig{fmt.Sprintf("secret %q not found", name)}
		}
		if err != nil {
			return nil, err
		}
		secs[name] = s
		return s, nil
	}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, err := configMap(from.ConfigMapRef.Name, from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional)
			if err != nil {
				return nil, err
			}
			if cm != nil {
				for k, v := range cm.Data {
					env[from.Prefix+k] = v
				}
			}
		case from.SecretRef != nil:
			s, err := secret(from.SecretRef.Name, from.SecretRef.Optional != nil && *from.SecretRef.Optional)
			if err != nil {
				return nil, err
			}
			if s != nil {
				for k, v := range s.Data {
					env[from.Prefix+k] = string(v)
				}
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = expand(e.Value, env)
			continue
		}
		vf := e.ValueFrom
		switch {
		case vf.ConfigMapKeyRef != nil:
			r := vf.ConfigMapKeyRef
			optional := r.Optional != nil && *r.Optional
			cm, err := configMap(r.Name, optional)
			if err != nil {
				return nil, err
			}
			v, ok := "", false
			if cm != nil {
				v, ok = cm.Data[r.Key]
			}
			if !ok && !optional {
				return nil, errConfig{fmt.Sprintf("couldn't find key %s in ConfigMap %s/%s", r.Key, pod.Namespace, r.Name)}
			}
			if ok {
				env[e.Name] = v
			}
		case vf.SecretKeyRef != nil:
			r := vf.SecretKeyRef
			optional := r.Optional != nil && *r.Optional
			s, err := secret(r.Name, optional)
			if err != nil {
				return nil, err
			}
			var v []byte
			ok := false
			if s != nil {
				v, ok = s.Data[r.Key]
			}
			if !ok && !optional {
				return nil, errConfig{fmt.Sprintf("couldn't find key %s in Secret %s/%s", r.Key, pod.Namespace, r.Name)}
			}
			if ok {
				env[e.Name] = string(v)
			}
		case vf.FieldRef != nil:
			v, err := fieldValue(pod, vf.FieldRef.FieldPath, podIP, p.nodeIP)
			if err != nil {
				return nil, errConfig{fmt.Sprintf("env %s: %v", e.Name, err)}
			}
			env[e.Name] = v
		case vf.ResourceFieldRef != nil:
			v, err := resourceValue(c, vf.ResourceFieldRef)
			if err != nil {
				return nil, errConfig{fmt.Sprintf("env %s: %v", e.Name, err)}
			}
			env[e.Name] = v
		}
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out, nil
}

// fieldValue is the downward API's value of path.
func fieldValue(pod *corev1.Pod, path, podIP, nodeIP string) (string, error) {
	if k, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(k, "']")], nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(k, "']")], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	case "status.hostIP", "status.hostIPs":
		return nodeIP, nil
	}
	return "", fmt.Errorf("field %q is not one a banger node fills", path)
}

// resourceValue is a resourceFieldRef's value: CPUs rounded up (or in
// the divisor's units), memory in bytes (or divisor units).
func resourceValue(c corev1.Container, r *corev1.ResourceFieldSelector) (string, error) {
	kind, name, ok := strings.Cut(r.Resource, ".")
	if !ok {
		return "", fmt.Errorf("resource %q", r.Resource)
	}
	list := c.Resources.Limits
	if kind == "requests" {
		list = c.Resources.Requests
	}
	q, ok := list[corev1.ResourceName(name)]
	if !ok {
		return "0", nil
	}
	div := r.Divisor
	if div.IsZero() {
		if name == "cpu" {
			return strconv.FormatInt((q.MilliValue()+999)/1000, 10), nil
		}
		return strconv.FormatInt(q.Value(), 10), nil
	}
	if name == "cpu" {
		return strconv.FormatInt((q.MilliValue()+div.MilliValue()-1)/div.MilliValue(), 10), nil
	}
	return strconv.FormatInt((q.Value()+div.Value()-1)/div.Value(), 10), nil
}

// expand replaces $(NAME) with env's NAME, as Kubernetes does in
// values, commands and arguments: $$ is a $, and a name not defined
// stays as written.
func expand(s string, env map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// expandAll expands each of args against the KEY=VALUE list env.
func expandAll(args []string, env []string) []string {
	m := map[string]string{}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		m[k] = v
	}
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(a, m)
	}
	return out
}
