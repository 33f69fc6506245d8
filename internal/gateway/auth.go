package gateway

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opstrace/opstrace/internal/tokens"
)

// TenantList is what the controller publishes for the gateway: every tenant that may send and read data, with
// what the gateway enforces for it. A tenant missing from the list does not exist (or was deleted).
type TenantList struct {
	Tenants map[string]TenantPolicy `json:"tenants"`
}

// TenantPolicy is one tenant's entry in the TenantList.
type TenantPolicy struct {
	Suspended  bool     `json:"suspended,omitempty"`
	RevokedIDs []string `json:"revokedIDs,omitempty"`
	// IngestionRate and IngestionBurst are in samples per second; 0 means no limit at the gateway.
	IngestionRate  int64 `json:"ingestionRate,omitempty"`
	IngestionBurst int64 `json:"ingestionBurst,omitempty"`
	// LogIngestionRate and LogIngestionBurst limit Loki pushes, in bytes per second and bytes of the
	// uncompressed push payload (the decoded body: JSON or snappy-decoded protobuf); 0 means no limit.
	LogIngestionRate  int64 `json:"logIngestionRate,omitempty"`
	LogIngestionBurst int64 `json:"logIngestionBurst,omitempty"`
}

// ParseTenantList decodes the controller's tenant list, refusing unknown fields so that a controller newer than
// the gateway is noticed instead of half-applied.
func ParseTenantList(data []byte) (TenantList, error) {
	decoder := json.NewDecoder(strings.NewReader(string(data)))
	decoder.DisallowUnknownFields()
	var list TenantList
	if err := decoder.Decode(&list); err != nil {
		return TenantList{}, fmt.Errorf("tenant list: %w", err)
	}
	return list, nil
}

// Refusal reasons beyond the token's own (tokens.Reason*).
const (
	ReasonUnknownTenant   tokens.Reason = "unknown tenant"
	ReasonTenantSuspended tokens.Reason = "tenant suspended"
	ReasonTokenRevoked    tokens.Reason = "token revoked"
	ReasonNotBearer       tokens.Reason = "authorization is not a bearer token"
)

// AuthError is a refused request: the HTTP status and the stable reason.
type AuthError struct {
	Status int
	Reason tokens.Reason
}

func (e *AuthError) Error() string { return string(e.Reason) }

// tenantState is a TenantList prepared for lookups on every request.
type tenantState struct {
	tenants map[string]tenantEntry
}

type tenantEntry struct {
	policy  TenantPolicy
	revoked map[string]struct{}
}

func newTenantState(list TenantList) *tenantState {
	state := &tenantState{tenants: make(map[string]tenantEntry, len(list.Tenants))}
	for name, policy := range list.Tenants {
		revoked := make(map[string]struct{}, len(policy.RevokedIDs))
		for _, id := range policy.RevokedIDs {
			revoked[id] = struct{}{}
		}
		state.tenants[name] = tenantEntry{policy: policy, revoked: revoked}
	}
	return state
}

// Authenticator turns an Authorization header into a tenant. Signatures are verified once per token and the
// result cached; tenant existence, suspension and revocation are checked on every request against the latest
// tenant list, so they take effect as soon as the list is reloaded.
type Authenticator struct {
	verifier atomic.Pointer[tokens.Verifier]
	tenants  atomic.Pointer[tenantState]
	cache    *verifiedCache
	now      func() time.Time
}

// NewAuthenticator starts with an empty key set and tenant list: every request is refused until both arrive.
func NewAuthenticator(audience string, now func() time.Time) *Authenticator {
	if now == nil {
		now = time.Now
	}
	a := &Authenticator{cache: newVerifiedCache(maxCachedTokens), now: now}
	a.verifier.Store(&tokens.Verifier{Audience: audience, Keys: tokens.KeySet{}, Now: now})
	a.tenants.Store(newTenantState(TenantList{}))
	return a
}

// SetKeys replaces the verification keys. Cached verifications are dropped, so tokens signed by a removed key
// stop working at once.
func (a *Authenticator) SetKeys(keys tokens.KeySet) {
	current := a.verifier.Load()
	a.verifier.Store(&tokens.Verifier{Audience: current.Audience, Keys: keys, Now: a.now})
	a.cache.clear()
}

// SetTenants replaces the tenant list.
func (a *Authenticator) SetTenants(list TenantList) {
	a.tenants.Store(newTenantState(list))
}

// Policy returns the tenant's current policy.
func (a *Authenticator) Policy(tenant string) (TenantPolicy, bool) {
	entry, ok := a.tenants.Load().tenants[tenant]
	return entry.policy, ok
}

// Authenticate returns the tenant of a valid bearer token, or an *AuthError: 401 for a token that proves no
// identity, 403 for a valid identity that may not proceed.
func (a *Authenticator) Authenticate(authorization string) (string, *AuthError) {
	if authorization == "" {
		return "", &AuthError{Status: http.StatusUnauthorized, Reason: tokens.ReasonMissing}
	}
	scheme, token, found := strings.Cut(authorization, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", &AuthError{Status: http.StatusUnauthorized, Reason: ReasonNotBearer}
	}
	token = strings.TrimSpace(token)
	if len(token) > tokens.MaxTokenBytes {
		return "", &AuthError{Status: http.StatusUnauthorized, Reason: tokens.ReasonTooLarge}
	}

	key := sha256.Sum256([]byte(token))
	claims, ok := a.cache.get(key, a.now())
	if !ok {
		var err error
		claims, err = a.verifier.Load().Verify(token)
		if err != nil {
			return "", &AuthError{Status: http.StatusUnauthorized, Reason: tokens.ReasonOf(err)}
		}
		a.cache.put(key, claims)
	}

	entry, ok := a.tenants.Load().tenants[claims.Tenant]
	switch {
	case !ok:
		return "", &AuthError{Status: http.StatusUnauthorized, Reason: ReasonUnknownTenant}
	case hasKey(entry.revoked, claims.ID):
		return "", &AuthError{Status: http.StatusUnauthorized, Reason: ReasonTokenRevoked}
	case entry.policy.Suspended:
		return "", &AuthError{Status: http.StatusForbidden, Reason: ReasonTenantSuspended}
	}
	return claims.Tenant, nil
}

func hasKey(set map[string]struct{}, key string) bool {
	_, ok := set[key]
	return ok
}

// maxCachedTokens bounds the cache: enough for every client of a large cluster, at about 150 bytes an entry.
const maxCachedTokens = 65536

// verifiedCache remembers verified tokens by their SHA-256, never the token itself, until they expire.
type verifiedCache struct {
	mu      sync.Mutex
	max     int
	entries map[[sha256.Size]byte]tokens.Claims
}

func newVerifiedCache(max int) *verifiedCache {
	return &verifiedCache{max: max, entries: make(map[[sha256.Size]byte]tokens.Claims)}
}

func (c *verifiedCache) get(key [sha256.Size]byte, now time.Time) (tokens.Claims, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	claims, ok := c.entries[key]
	if ok && !now.Before(claims.ExpiresAt) {
		delete(c.entries, key)
		return tokens.Claims{}, false
	}
	return claims, ok
}

func (c *verifiedCache) put(key [sha256.Size]byte, claims tokens.Claims) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		// Evict an arbitrary entry: map order is random, and a re-verification is the only cost of a miss.
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[key] = claims
}

func (c *verifiedCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.entries)
}
