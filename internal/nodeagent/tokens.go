package nodeagent

import (
	"context"
	"fmt"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// tokenManager requests service account tokens bound to pods through the TokenRequest API and keeps each
// until 80% of its lifetime has passed, as the kubelet does.
type tokenManager struct {
	client kubernetes.Interface
	now    func() time.Time

	mu     sync.Mutex
	tokens map[string]cachedToken
}

type cachedToken struct {
	token           string
	issued, expires time.Time
}

func newTokenManager(client kubernetes.Interface) *tokenManager {
	return &tokenManager{client: client, now: time.Now, tokens: map[string]cachedToken{}}
}

func tokenKey(pod *corev1.Pod, audience string, exp int64) string {
	return fmt.Sprintf("%s/%s/%d", pod.UID, audience, exp)
}

// Token implements TokenSource.
func (m *tokenManager) Token(pod *corev1.Pod, audience string, exp int64) (string, error) {
	key := tokenKey(pod, audience, exp)
	m.mu.Lock()
	t, ok := m.tokens[key]
	m.mu.Unlock()
	now := m.now()
	if ok && now.Before(t.issued.Add(time.Duration(float64(t.expires.Sub(t.issued))*0.8))) {
		return t.token, nil
	}
	sa := pod.Spec.ServiceAccountName
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if sa == "" {
		// Without the ServiceAccount admission plugin a pod names no account; its token is not bound to it.
		sa, req.Spec.BoundObjectRef = "default", nil
	}
	if audience != "" {
		req.Spec.Audiences = []string{audience}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := m.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		if ok && now.Before(t.expires) {
			return t.token, nil // keep the old one while it is valid
		}
		return "", fmt.Errorf("request a token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	m.mu.Lock()
	m.tokens[key] = cachedToken{token: resp.Status.Token, issued: now, expires: resp.Status.ExpirationTimestamp.Time}
	m.mu.Unlock()
	return resp.Status.Token, nil
}

// forget drops the tokens of a pod.
func (m *tokenManager) forget(uid string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.tokens {
		if len(k) > len(uid) && k[:len(uid)+1] == uid+"/" {
			delete(m.tokens, k)
		}
	}
}
