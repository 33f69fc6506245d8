package tokens

import (
	"strings"
	"testing"
	"time"
)

func TestSigningKeySurvivesItsSecretAndKeySetEncodings(t *testing.T) {
	key, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := key.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	restored, err := ParseSigningKeyPEM(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	if restored.ID != key.ID || !restored.Private.Equal(key.Private) {
		t.Fatalf("PEM round trip changed the key: id %s -> %s", key.ID, restored.ID)
	}

	other, _ := GenerateSigningKey()
	jwks, err := KeySet{key.ID: key.Public(), other.ID: other.Public()}.MarshalJWKS()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(jwks), string(pemBytes)) || strings.Contains(string(jwks), `"d"`) {
		t.Fatal("the published key set contains private key material")
	}
	keys, err := ParseJWKS(jwks)
	if err != nil {
		t.Fatal(err)
	}

	// A token signed by a restored key verifies against the published set; rotation keeps both keys valid.
	now := time.Now()
	for _, signer := range []SigningKey{restored, other} {
		token, id, err := signer.Issue("team-a", "ns/prod", now, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		claims, err := (&Verifier{Audience: "ns/prod", Keys: keys}).Verify(token)
		if err != nil {
			t.Fatalf("token of key %s: %v", signer.ID, err)
		}
		if claims.Tenant != "team-a" || claims.ID != id || !claims.ExpiresAt.Equal(now.Add(time.Hour).Truncate(time.Second)) {
			t.Fatalf("claims %+v, want tenant team-a, id %s, expiry in an hour", claims, id)
		}
	}
}

func TestBadKeyMaterialIsRefusedWithWhatIsWrong(t *testing.T) {
	for name, tc := range map[string]struct {
		jwks, want string
	}{
		"not JSON":    {`keys`, "key set:"},
		"RSA key":     {`{"keys":[{"kty":"RSA","kid":"r1"}]}`, `keys[0] (kid "r1") is RSA/`},
		"short x":     {`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"AAAA"}]}`, "not a base64url Ed25519 public key"},
		"missing kid": {`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + strings.Repeat("A", 43) + `"}]}`, "has no kid"},
	} {
		if _, err := ParseJWKS([]byte(tc.jwks)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to contain %q", name, err, tc.want)
		}
	}
	if _, err := ParseSigningKeyPEM([]byte("not pem")); err == nil {
		t.Error("a non-PEM signing key was accepted")
	}
	key, _ := GenerateSigningKey()
	if _, _, err := key.Issue("", "aud", time.Now(), time.Hour); err == nil {
		t.Error("a token without a tenant was issued")
	}
}
