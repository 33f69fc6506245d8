// Package tokens issues and verifies the bearer tokens that authenticate tenants at the gateway.
//
// A token is a JWT signed with Ed25519 (alg EdDSA, the only algorithm accepted): the subject is the tenant,
// the audience is the cluster, the id (jti) is the handle for revocation, and the key id (kid) in the header
// picks the verification key, so a cluster can add a new signing key while tokens signed with the old one keep
// working until that key is removed from the key set.
//
// Whether the tenant still exists, is suspended, or has the token's id revoked is not a property of the token;
// the gateway checks that against the controller's current tenant list on every request.
package tokens

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// Algorithm is the only signing algorithm issued and accepted.
	Algorithm = "EdDSA"
	// Issuer is the iss claim of every token.
	Issuer = "opstrace"
	// MaxTokenBytes bounds what the verifier parses; real tokens are about 400 bytes.
	MaxTokenBytes = 4096
	// clockSkew tolerates clocks of the controller and gateway that disagree by a little.
	clockSkew = 30 * time.Second
)

// Reason says why a token was refused. The strings are stable: they appear in error bodies and metric labels.
type Reason string

const (
	ReasonMissing       Reason = "missing token"
	ReasonTooLarge      Reason = "token too large"
	ReasonMalformed     Reason = "malformed token"
	ReasonAlgorithm     Reason = "token algorithm not allowed"
	ReasonUnknownKey    Reason = "unknown key id"
	ReasonBadSignature  Reason = "invalid token signature"
	ReasonExpired       Reason = "token expired"
	ReasonNotYetValid   Reason = "token not yet valid"
	ReasonWrongAudience Reason = "token for another cluster"
	ReasonWrongIssuer   Reason = "token from another issuer"
	ReasonClaims        Reason = "token lacks tenant, id or expiry"
)

// Error is a refused token. It never contains the token itself.
type Error struct {
	Reason Reason
}

func (e *Error) Error() string { return string(e.Reason) }

func refuse(reason Reason) error { return &Error{Reason: reason} }

// ReasonOf returns the reason of a refusal, or "" when err is not one.
func ReasonOf(err error) Reason {
	var refused *Error
	if errors.As(err, &refused) {
		return refused.Reason
	}
	return ""
}

// Claims are what a verified token says.
type Claims struct {
	Tenant    string
	ID        string
	ExpiresAt time.Time
}

// SigningKey is a cluster's private key with its key id.
type SigningKey struct {
	ID      string
	Private ed25519.PrivateKey
}

// GenerateSigningKey makes a new Ed25519 key.
func GenerateSigningKey() (SigningKey, error) {
	_, private, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SigningKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	return newSigningKey(private), nil
}

func newSigningKey(private ed25519.PrivateKey) SigningKey {
	return SigningKey{ID: KeyID(private.Public().(ed25519.PublicKey)), Private: private}
}

// KeyID derives a key's id from its public half, so the id needs no storage of its own.
func KeyID(public ed25519.PublicKey) string {
	sum := sha256.Sum256(public)
	return hex.EncodeToString(sum[:8])
}

// Public is the verification half of the key.
func (k SigningKey) Public() ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// MarshalPEM encodes the private key as PKCS #8 PEM, for a Secret.
func (k SigningKey) MarshalPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.Private)
	if err != nil {
		return nil, fmt.Errorf("encode signing key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseSigningKeyPEM decodes a key written by MarshalPEM.
func ParseSigningKeyPEM(data []byte) (SigningKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return SigningKey{}, errors.New("signing key: no PEM block of type PRIVATE KEY")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return SigningKey{}, fmt.Errorf("signing key: %w", err)
	}
	private, ok := key.(ed25519.PrivateKey)
	if !ok {
		return SigningKey{}, fmt.Errorf("signing key: %T is not an Ed25519 key", key)
	}
	return newSigningKey(private), nil
}

// Issue signs a token for tenant, valid for audience (the cluster) from issuedAt for lifetime. It returns the
// token and its id, which revokes it when listed in the Tenant's spec.tokens.revokedIDs.
func (k SigningKey) Issue(tenant, audience string, issuedAt time.Time, lifetime time.Duration) (token, id string, err error) {
	if tenant == "" || audience == "" || lifetime <= 0 {
		return "", "", errors.New("issue token: tenant, audience and a positive lifetime are required")
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", "", fmt.Errorf("issue token: %w", err)
	}
	id = hex.EncodeToString(raw[:])
	claims := jwt.RegisteredClaims{
		Issuer:    Issuer,
		Subject:   tenant,
		Audience:  jwt.ClaimStrings{audience},
		ID:        id,
		IssuedAt:  jwt.NewNumericDate(issuedAt),
		NotBefore: jwt.NewNumericDate(issuedAt),
		ExpiresAt: jwt.NewNumericDate(issuedAt.Add(lifetime)),
	}
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	t.Header["kid"] = k.ID
	token, err = t.SignedString(k.Private)
	if err != nil {
		return "", "", fmt.Errorf("issue token: %w", err)
	}
	return token, id, nil
}

// Verifier checks tokens for one cluster against its key set.
type Verifier struct {
	// Audience is the cluster a token must be for.
	Audience string
	// Keys are the verification keys by key id.
	Keys KeySet
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Verify checks the token's size, algorithm, key id, signature, issuer, audience and validity period, in that
// order, and returns its claims or an *Error with the reason.
func (v *Verifier) Verify(token string) (Claims, error) {
	switch {
	case token == "":
		return Claims{}, refuse(ReasonMissing)
	case len(token) > MaxTokenBytes:
		return Claims{}, refuse(ReasonTooLarge)
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{Algorithm}),
		jwt.WithIssuer(Issuer),
		jwt.WithAudience(v.Audience),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(clockSkew),
		jwt.WithTimeFunc(now),
		jwt.WithStrictDecoding(),
	)
	var claims jwt.RegisteredClaims
	parsed, err := parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		key, ok := v.Keys[kid]
		if !ok {
			return nil, refuse(ReasonUnknownKey)
		}
		return key, nil
	})
	if err != nil {
		return Claims{}, refuse(reasonFor(parsed, err))
	}
	if claims.Subject == "" || claims.ID == "" || claims.ExpiresAt == nil {
		return Claims{}, refuse(ReasonClaims)
	}
	return Claims{Tenant: claims.Subject, ID: claims.ID, ExpiresAt: claims.ExpiresAt.Time}, nil
}

func reasonFor(parsed *jwt.Token, err error) Reason {
	if reason := ReasonOf(err); reason != "" {
		return reason
	}
	if errors.Is(err, jwt.ErrTokenMalformed) {
		return ReasonMalformed
	}
	// The library reports a disallowed algorithm as a signature error; tell them apart by the header.
	if parsed != nil {
		if alg, _ := parsed.Header["alg"].(string); alg != Algorithm {
			return ReasonAlgorithm
		}
	}
	switch {
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return ReasonAlgorithm
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ReasonBadSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ReasonWrongAudience
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ReasonWrongIssuer
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return ReasonClaims
	default:
		return ReasonMalformed
	}
}
