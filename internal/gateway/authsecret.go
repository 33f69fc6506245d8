package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/opstrace/opstrace/internal/tokens"
)

// AuthSecret is where the controller publishes what the gateway authenticates with: a Secret whose data holds
// the verification key set (a JWKS) under KeysKey and the TenantList (JSON) under TenantsKey.
type AuthSecret struct {
	Namespace, Name     string
	KeysKey, TenantsKey string
}

// AuthWatcher keeps an Authenticator in step with the auth Secret, watched through the API server, so that a
// new, revoked, suspended or deleted tenant counts within a second (a mounted Secret volume can take a
// minute to be updated by the kubelet). An invalid update is logged and the previous key set and tenant list
// kept: the gateway never drops to "refuse everything" because of one bad write. A deleted Secret, though,
// is an empty tenant list: every request is refused until it is recreated.
type AuthWatcher struct {
	secret   AuthSecret
	auth     *Authenticator
	informer cache.SharedIndexInformer
	log      *slog.Logger
	loaded   atomic.Bool
	reloadOK prometheus.Gauge

	// Digests of what was last applied, to skip re-lists and updates of other fields. Only the informer's
	// handler goroutine touches them.
	keysDigest, tenantsDigest [sha256.Size]byte
}

// NewAuthWatcher prepares the watch of one Secret (a list and watch with a field selector on its name, so
// the gateway needs access to that Secret only); Run starts it.
func NewAuthWatcher(client kubernetes.Interface, secret AuthSecret, auth *Authenticator, registerer prometheus.Registerer, log *slog.Logger) (*AuthWatcher, error) {
	w := &AuthWatcher{secret: secret, auth: auth, log: log.With("secret", secret.Namespace+"/"+secret.Name)}
	w.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "opstrace_gateway_auth_secret_last_reload_successful",
		Help: "Whether the last change of the auth Secret (key set and tenant list) was valid and applied.",
	})
	if err := registerer.Register(w.reloadOK); err != nil {
		return nil, fmt.Errorf("register auth Secret metrics: %w", err)
	}
	lw := cache.NewListWatchFromClient(client.CoreV1().RESTClient(), "secrets", secret.Namespace,
		fields.OneTermEqualSelector("metadata.name", secret.Name))
	w.informer = cache.NewSharedIndexInformer(lw, &corev1.Secret{}, 0, cache.Indexers{})
	if _, err := w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.update,
		UpdateFunc: func(_, obj any) { w.update(obj) },
		DeleteFunc: func(any) { w.deleted() },
	}); err != nil {
		return nil, fmt.Errorf("watch auth Secret: %w", err)
	}
	return w, nil
}

// Run watches until ctx ends; a failed watch is re-listed by the informer.
func (w *AuthWatcher) Run(ctx context.Context) { w.informer.RunWithContext(ctx) }

// Loaded reports whether a valid auth Secret has been applied once.
func (w *AuthWatcher) Loaded() bool { return w.loaded.Load() }

func (w *AuthWatcher) update(obj any) {
	secret, ok := obj.(*corev1.Secret)
	if !ok || secret.Name != w.secret.Name {
		return
	}
	log := w.log.With("resourceVersion", secret.ResourceVersion)
	keysJSON, tenantsJSON := secret.Data[w.secret.KeysKey], secret.Data[w.secret.TenantsKey]
	keysDigest, tenantsDigest := sha256.Sum256(keysJSON), sha256.Sum256(tenantsJSON)
	keysChanged := !w.loaded.Load() || !bytes.Equal(keysDigest[:], w.keysDigest[:])
	tenantsChanged := !w.loaded.Load() || !bytes.Equal(tenantsDigest[:], w.tenantsDigest[:])
	if !keysChanged && !tenantsChanged {
		w.reloadOK.Set(1) // what is applied is what the Secret says, even after an invalid update in between
		return
	}

	// Both parts are checked before either is applied.
	var keys tokens.KeySet
	var list TenantList
	err := w.parse(keysJSON, tenantsJSON, &keys, &list)
	if err != nil {
		w.reloadOK.Set(0)
		log.Warn("invalid auth Secret; keeping the previous key set and tenant list", "error", err)
		return
	}
	if keysChanged {
		w.auth.SetKeys(keys) // drops cached verifications, so only when the keys changed
		w.keysDigest = keysDigest
	}
	if tenantsChanged {
		w.auth.SetTenants(list)
		w.tenantsDigest = tenantsDigest
	}
	w.loaded.Store(true)
	w.reloadOK.Set(1)
	log.Info("loaded auth Secret", "keys", len(keys), "tenants", len(list.Tenants))
}

func (w *AuthWatcher) parse(keysJSON, tenantsJSON []byte, keys *tokens.KeySet, list *TenantList) error {
	if keysJSON == nil || tenantsJSON == nil {
		return fmt.Errorf("the Secret's data needs both %q and %q; the controller writes them", w.secret.KeysKey, w.secret.TenantsKey)
	}
	var err error
	if *keys, err = tokens.ParseJWKS(keysJSON); err != nil {
		return fmt.Errorf("%s: %w", w.secret.KeysKey, err)
	}
	if *list, err = ParseTenantList(tenantsJSON); err != nil {
		return fmt.Errorf("%s: %w", w.secret.TenantsKey, err)
	}
	return nil
}

func (w *AuthWatcher) deleted() {
	w.auth.SetTenants(TenantList{})
	w.tenantsDigest = [sha256.Size]byte{} // the recreated Secret's list is applied whatever it holds
	w.log.Warn("auth Secret deleted; refusing every tenant until it is recreated")
}
