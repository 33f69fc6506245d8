package controllers

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/manifests"
	"github.com/opstrace/opstrace/internal/tokens"
)

// signingKeysLabel marks a cluster's signing-key Secret, so Tenants are reconciled when it appears.
const signingKeysLabel = "opstrace.io/signing-keys-of"

// signingKeys are a cluster's token keys: the one that signs new tokens and every one that still verifies.
type signingKeys struct {
	current tokens.SigningKey
	all     tokens.KeySet
}

// newSigningKeysSecret makes the Secret of a cluster's first signing key. It is created once and never
// regenerated: a new key would invalidate every token handed out.
func newSigningKeysSecret(cluster *v1alpha1.MetricsCluster) (*corev1.Secret, error) {
	key, err := tokens.GenerateSigningKey()
	if err != nil {
		return nil, err
	}
	pemBytes, err := key.MarshalPEM()
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      manifests.SigningKeysSecretName(cluster.Name),
			Namespace: cluster.Namespace,
			Labels:    map[string]string{signingKeysLabel: cluster.Name},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			manifests.SigningKeyCurrentKey: []byte(key.ID),
			key.ID + ".pem":                pemBytes,
		},
	}, nil
}

// parseSigningKeys reads every "<key id>.pem" of the Secret; the "current" entry names the signing one.
func parseSigningKeys(secret *corev1.Secret) (signingKeys, error) {
	keys := signingKeys{all: tokens.KeySet{}}
	currentID := string(secret.Data[manifests.SigningKeyCurrentKey])
	names := make([]string, 0, len(secret.Data))
	for name := range secret.Data {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		id, ok := strings.CutSuffix(name, ".pem")
		if !ok {
			continue
		}
		key, err := tokens.ParseSigningKeyPEM(secret.Data[name])
		if err != nil {
			return signingKeys{}, fmt.Errorf("secret %s key %s: %w", secret.Name, name, err)
		}
		if key.ID != id {
			return signingKeys{}, fmt.Errorf("secret %s key %s holds key id %s; the entry must be named after its key id", secret.Name, name, key.ID)
		}
		keys.all[key.ID] = key.Public()
		if key.ID == currentID {
			keys.current = key
		}
	}
	if keys.current.Private == nil {
		return signingKeys{}, fmt.Errorf("secret %s: %q names key %q, which is not in the Secret", secret.Name, manifests.SigningKeyCurrentKey, currentID)
	}
	return keys, nil
}

// tokenRenewalFraction: a token is replaced once this share of its lifetime has passed, so clients that read
// the Secret have the rest of it to pick up the new one.
const tokenRenewalFraction = 0.8

// tokenDecision says whether a tenant needs a new token and why, and when to look again otherwise. Pure: the
// caller reads the Secret and the clock.
func tokenDecision(existing []byte, keys signingKeys, audience string, revoked []string, lifetime time.Duration, now time.Time) (issue bool, reason string, recheck time.Duration) {
	if len(existing) == 0 {
		return true, "no token yet", 0
	}
	verifier := tokens.Verifier{Audience: audience, Keys: keys.all, Now: func() time.Time { return now }}
	claims, err := verifier.Verify(string(existing))
	if err != nil {
		return true, "the current token is no longer valid: " + err.Error(), 0
	}
	for _, id := range revoked {
		if id == claims.ID {
			return true, "the current token was revoked", 0
		}
	}
	issuedFor := lifetime
	renewAt := claims.ExpiresAt.Add(-time.Duration(float64(issuedFor) * (1 - tokenRenewalFraction)))
	if !now.Before(renewAt) {
		return true, "the current token passed 80% of its lifetime", 0
	}
	return false, "", renewAt.Sub(now)
}

// tokenSecret is the Secret that hands a tenant its token.
func tokenSecret(namespace, tenant, token string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      manifests.TenantTokenSecretName(tenant),
			Namespace: namespace,
			Labels: map[string]string{
				"app.kubernetes.io/part-of":    "opstrace",
				"app.kubernetes.io/managed-by": "opstrace-controller",
				"opstrace.io/tenant":           tenant,
			},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{manifests.TenantTokenKey: []byte(token)},
	}
}
