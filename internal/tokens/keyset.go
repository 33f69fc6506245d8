package tokens

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
)

// KeySet holds verification keys by key id. It is published to the gateway as a JSON Web Key Set (RFC 7517,
// Ed25519 keys as in RFC 8037), which holds public keys only.
type KeySet map[string]ed25519.PublicKey

type jwks struct {
	Keys []jwk `json:"keys"`
}

type jwk struct {
	KeyType   string `json:"kty"`
	Curve     string `json:"crv"`
	KeyID     string `json:"kid"`
	X         string `json:"x"`
	Use       string `json:"use,omitempty"`
	Algorithm string `json:"alg,omitempty"`
}

// MarshalJWKS encodes the set with its keys sorted by id, so the same set always encodes the same.
func (ks KeySet) MarshalJWKS() ([]byte, error) {
	ids := make([]string, 0, len(ks))
	for id := range ks {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	set := jwks{Keys: []jwk{}}
	for _, id := range ids {
		set.Keys = append(set.Keys, jwk{
			KeyType: "OKP", Curve: "Ed25519", KeyID: id, Use: "sig", Algorithm: Algorithm,
			X: base64.RawURLEncoding.EncodeToString(ks[id]),
		})
	}
	return json.MarshalIndent(set, "", "  ")
}

// ParseJWKS decodes a key set written by MarshalJWKS. Keys of other types are an error, not skipped: a key set
// the gateway cannot fully read is a configuration mistake to surface.
func ParseJWKS(data []byte) (KeySet, error) {
	var set jwks
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("key set: %w", err)
	}
	ks := KeySet{}
	for i, key := range set.Keys {
		if key.KeyType != "OKP" || key.Curve != "Ed25519" {
			return nil, fmt.Errorf("key set: keys[%d] (kid %q) is %s/%s; only OKP/Ed25519 keys are supported", i, key.KeyID, key.KeyType, key.Curve)
		}
		x, err := base64.RawURLEncoding.DecodeString(key.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("key set: keys[%d] (kid %q): x is not a base64url Ed25519 public key", i, key.KeyID)
		}
		if key.KeyID == "" {
			return nil, fmt.Errorf("key set: keys[%d] has no kid", i)
		}
		ks[key.KeyID] = ed25519.PublicKey(x)
	}
	return ks, nil
}
