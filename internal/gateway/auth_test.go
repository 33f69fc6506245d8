package gateway

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/opstrace/opstrace/internal/tokens"
)

const testAudience = "opstrace/prod"

var testNow = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

type fixture struct {
	key     tokens.SigningKey
	auth    *Authenticator
	valid   string
	validID string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	key, err := tokens.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	auth := NewAuthenticator(testAudience, func() time.Time { return testNow })
	auth.SetKeys(tokens.KeySet{key.ID: key.Public()})
	auth.SetTenants(TenantList{Tenants: map[string]TenantPolicy{
		"team-a":    {RevokedIDs: []string{"revoked-id"}},
		"team-b":    {},
		"suspended": {Suspended: true},
	}})
	valid, id, err := key.Issue("team-a", testAudience, testNow.Add(-time.Hour), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{key: key, auth: auth, valid: valid, validID: id}
}

// claims are valid for team-a unless a case changes them.
func (f *fixture) claims(mutate func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
	c := jwt.RegisteredClaims{
		Issuer: tokens.Issuer, Subject: "team-a", Audience: jwt.ClaimStrings{testAudience}, ID: "id-1",
		IssuedAt: jwt.NewNumericDate(testNow.Add(-time.Hour)), NotBefore: jwt.NewNumericDate(testNow.Add(-time.Hour)),
		ExpiresAt: jwt.NewNumericDate(testNow.Add(time.Hour)),
	}
	if mutate != nil {
		mutate(&c)
	}
	return c
}

func (f *fixture) sign(t testing.TB, method jwt.SigningMethod, kid string, claims jwt.Claims, key any) string {
	t.Helper()
	token := jwt.NewWithClaims(method, claims)
	if kid != "" {
		token.Header["kid"] = kid
	}
	signed, err := token.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

func segment(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestHostileTokensAreRefusedWithTheirReason(t *testing.T) {
	f := newFixture(t)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	parts := strings.Split(f.valid, ".")
	teamBPayload := segment(`{"iss":"opstrace","sub":"team-b","aud":["opstrace/prod"],"jti":"x","exp":4102444800}`)

	tests := []struct {
		name          string
		authorization string
		status        int
		reason        tokens.Reason
	}{
		{"no authorization header", "", 401, tokens.ReasonMissing},
		{"basic auth instead of a bearer token", "Basic dXNlcjpwYXNz", 401, ReasonNotBearer},
		{"empty bearer token", "Bearer ", 401, tokens.ReasonMissing},
		{"two segments", "Bearer abc.def", 401, tokens.ReasonMalformed},
		{"garbage segments", "Bearer !!!.???.###", 401, tokens.ReasonMalformed},
		{"oversized", "Bearer " + strings.Repeat("a", tokens.MaxTokenBytes+1), 401, tokens.ReasonTooLarge},
		{"alg none", "Bearer " + segment(`{"alg":"none","kid":"`+f.key.ID+`"}`) + "." + parts[1] + ".", 401, tokens.ReasonAlgorithm},
		{"HS256 keyed with the public key", "Bearer " + f.sign(t, jwt.SigningMethodHS256, f.key.ID, f.claims(nil), []byte(f.key.Public())), 401, tokens.ReasonAlgorithm},
		{"ES256 with an attacker's key", "Bearer " + f.sign(t, jwt.SigningMethodES256, f.key.ID, f.claims(nil), ecKey), 401, tokens.ReasonAlgorithm},
		{"unknown algorithm", "Bearer " + segment(`{"alg":"XX512","kid":"`+f.key.ID+`"}`) + "." + parts[1] + "." + parts[2], 401, tokens.ReasonAlgorithm},
		{"forged signature under the cluster's key id", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(nil), otherKey), 401, tokens.ReasonBadSignature},
		{"payload swapped to another tenant", "Bearer " + parts[0] + "." + teamBPayload + "." + parts[2], 401, tokens.ReasonBadSignature},
		{"unknown key id", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, "not-a-key", f.claims(nil), otherKey), 401, tokens.ReasonUnknownKey},
		{"no key id", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, "", f.claims(nil), f.key.Private), 401, tokens.ReasonUnknownKey},
		{"another cluster's audience", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"opstrace/staging"} }), f.key.Private), 401, tokens.ReasonWrongAudience},
		{"another issuer", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(func(c *jwt.RegisteredClaims) { c.Issuer = "mallory" }), f.key.Private), 401, tokens.ReasonWrongIssuer},
		{"expired", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(testNow.Add(-time.Hour)) }), f.key.Private), 401, tokens.ReasonExpired},
		{"not yet valid", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(func(c *jwt.RegisteredClaims) { c.NotBefore = jwt.NewNumericDate(testNow.Add(time.Hour)) }), f.key.Private), 401, tokens.ReasonNotYetValid},
		{"no expiry", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil }), f.key.Private), 401, tokens.ReasonClaims},
		{"no tenant", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(func(c *jwt.RegisteredClaims) { c.Subject = "" }), f.key.Private), 401, tokens.ReasonClaims},
		{"revoked id", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(func(c *jwt.RegisteredClaims) { c.ID = "revoked-id" }), f.key.Private), 401, ReasonTokenRevoked},
		{"deleted tenant", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(func(c *jwt.RegisteredClaims) { c.Subject = "gone" }), f.key.Private), 401, ReasonUnknownTenant},
		{"suspended tenant", "Bearer " + f.sign(t, jwt.SigningMethodEdDSA, f.key.ID, f.claims(func(c *jwt.RegisteredClaims) { c.Subject = "suspended" }), f.key.Private), 403, ReasonTenantSuspended},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tenant, err := f.auth.Authenticate(tt.authorization)
			if err == nil {
				t.Fatalf("accepted as tenant %q", tenant)
			}
			if err.Status != tt.status || err.Reason != tt.reason {
				t.Fatalf("refused with %d %q, want %d %q", err.Status, err.Reason, tt.status, tt.reason)
			}
			token := strings.TrimPrefix(tt.authorization, "Bearer ")
			if len(token) > 8 && strings.Contains(err.Error(), token) {
				t.Fatalf("the refusal echoes the token: %q", err.Error())
			}
		})
	}

	tenant, err := f.auth.Authenticate("Bearer " + f.valid)
	if err != nil || tenant != "team-a" {
		t.Fatalf("the valid token was refused: tenant %q, %v", tenant, err)
	}
}

func TestCachedTokensStillObeyRevocationDeletionAndKeyRemoval(t *testing.T) {
	f := newFixture(t)
	header := "Bearer " + f.valid
	if _, err := f.auth.Authenticate(header); err != nil {
		t.Fatalf("valid token refused: %v", err)
	}

	f.auth.SetTenants(TenantList{Tenants: map[string]TenantPolicy{"team-a": {RevokedIDs: []string{f.validID}}}})
	if _, err := f.auth.Authenticate(header); err == nil || err.Reason != ReasonTokenRevoked {
		t.Fatalf("revoked cached token: %v, want %q", err, ReasonTokenRevoked)
	}

	f.auth.SetTenants(TenantList{Tenants: map[string]TenantPolicy{"team-a": {Suspended: true}}})
	if _, err := f.auth.Authenticate(header); err == nil || err.Status != http.StatusForbidden {
		t.Fatalf("suspended tenant's cached token: %v, want 403", err)
	}

	f.auth.SetTenants(TenantList{})
	if _, err := f.auth.Authenticate(header); err == nil || err.Reason != ReasonUnknownTenant {
		t.Fatalf("deleted tenant's cached token: %v, want %q", err, ReasonUnknownTenant)
	}

	f.auth.SetTenants(TenantList{Tenants: map[string]TenantPolicy{"team-a": {}}})
	f.auth.SetKeys(tokens.KeySet{})
	if _, err := f.auth.Authenticate(header); err == nil || err.Reason != tokens.ReasonUnknownKey {
		t.Fatalf("token of a removed key: %v, want %q", err, tokens.ReasonUnknownKey)
	}
}

func TestCacheExpiresTokensAndStaysBounded(t *testing.T) {
	now := testNow
	key, err := tokens.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	auth := NewAuthenticator(testAudience, func() time.Time { return now })
	auth.SetKeys(tokens.KeySet{key.ID: key.Public()})
	auth.SetTenants(TenantList{Tenants: map[string]TenantPolicy{"team-a": {}}})
	token, _, err := key.Issue("team-a", testAudience, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.Authenticate("Bearer " + token); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	if _, err := auth.Authenticate("Bearer " + token); err == nil || err.Reason != tokens.ReasonExpired {
		t.Fatalf("a token that expired while cached: %v, want %q", err, tokens.ReasonExpired)
	}

	cache := newVerifiedCache(3)
	for i := range 10 {
		cache.put([32]byte{byte(i)}, tokens.Claims{ExpiresAt: now.Add(time.Hour)})
	}
	if len(cache.entries) != 3 {
		t.Fatalf("cache holds %d entries, want at most 3", len(cache.entries))
	}
}

// FuzzAuthenticate: whatever the input, nothing is accepted unless it carries a valid Ed25519 signature by
// the cluster's key, checked here with the standard library independently of the JWT library.
func FuzzAuthenticate(f *testing.F) {
	fx := newFixture(f)
	parts := strings.Split(fx.valid, ".")
	f.Add(fx.valid)
	f.Add(segment(`{"alg":"none"}`) + "." + parts[1] + ".")
	f.Add(parts[0] + "." + parts[1] + "." + parts[2] + "=")
	f.Add(parts[0] + "." + segment(`{"sub":"team-b"}`) + "." + parts[2])
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, token string) {
		tenant, err := fx.auth.Authenticate("Bearer " + token)
		if err != nil {
			if err.Reason == "" || (err.Status != 401 && err.Status != 403) {
				t.Fatalf("refusal without a reason or with status %d: %+v", err.Status, err)
			}
			return
		}
		segments := strings.Split(strings.TrimSpace(token), ".")
		if len(segments) != 3 {
			t.Fatalf("accepted a token with %d segments as tenant %q", len(segments), tenant)
		}
		signature, decodeErr := base64.RawURLEncoding.DecodeString(segments[2])
		if decodeErr != nil || !ed25519.Verify(fx.key.Public(), []byte(segments[0]+"."+segments[1]), signature) {
			t.Fatalf("accepted a token without a valid signature as tenant %q: %q", tenant, token)
		}
	})
}
