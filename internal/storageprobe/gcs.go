package storageprobe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
)

// GCSCredentialsKey is the key of the credentials Secret holding a service account's JSON key.
const GCSCredentialsKey = "service-account.json"

// gcsReadScope is enough to list objects, which is all the probe does.
const gcsReadScope = "https://www.googleapis.com/auth/devstorage.read_only"

// probeGCS lists at most one object of the bucket through the JSON API, as Cortex's first bucket operation
// does: it needs the bucket to exist and the service account to be allowed storage.objects.list. Against a
// custom endpoint (an emulator) no credentials are sent, as Cortex's GCS client sends none there.
func probeGCS(ctx context.Context, spec v1alpha1.GCSStorage, secretName string, credentials map[string][]byte) error {
	base, client := "https://storage.googleapis.com", &http.Client{}
	endpoint, endpointField := "storage.googleapis.com", "spec.storage.gcs.credentialsSecret"
	secret := fmt.Sprintf("Secret %s (spec.storage.gcs.credentialsSecret)", secretName)
	if spec.Endpoint != "" {
		scheme := "https://"
		if spec.Insecure {
			scheme = "http://"
		}
		base, endpoint, endpointField = scheme+spec.Endpoint, spec.Endpoint, "spec.storage.gcs.endpoint"
	} else {
		config, problem := serviceAccount(credentials[GCSCredentialsKey], secret)
		if problem != nil {
			return problem
		}
		client = config.Client(ctx)
	}
	bucket := fmt.Sprintf("bucket %q at %s", spec.Bucket, endpoint)
	list := fmt.Sprintf("%s/storage/v1/b/%s/o?maxResults=1&fields=kind", base, url.PathEscape(spec.Bucket))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, list, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", bucket, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		var tokenErr *oauth2.RetrieveError
		if errors.As(err, &tokenErr) {
			return &Problem{Reason: ReasonCredentialsRejected, Message: fmt.Sprintf(
				"%s: Google refuses the service account key in %s (HTTP %d from the token endpoint); put a current JSON key of the service account in the Secret",
				secret, GCSCredentialsKey, tokenErr.Response.StatusCode)}
		}
		if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
			return &Problem{Reason: ReasonMisconfigured, Message: fmt.Sprintf(
				"spec.storage.gcs.insecure: the endpoint %s speaks plain HTTP, but insecure is false; recreate the MetricsCluster with insecure: true, or serve it over HTTPS", endpoint)}
		}
		return &Problem{Reason: ReasonUnreachable, Message: fmt.Sprintf(
			"%s: cannot reach %s (%s); check the address and that it is reachable from the controller", endpointField, endpoint, networkCause(err))}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusOK:
		return nil
	case resp.StatusCode == http.StatusNotFound:
		return &Problem{Reason: ReasonBucketNotFound, Message: fmt.Sprintf(
			"spec.storage.gcs.bucket: %s does not exist; create it (storage settings are immutable: to use another bucket, recreate the MetricsCluster)", bucket)}
	case resp.StatusCode == http.StatusUnauthorized:
		return &Problem{Reason: ReasonCredentialsRejected, Message: fmt.Sprintf(
			"%s: %s rejects the credentials (HTTP 401); put a valid service account key in %s", secret, endpoint, GCSCredentialsKey)}
	case resp.StatusCode == http.StatusForbidden:
		return &Problem{Reason: ReasonAccessDenied, Message: fmt.Sprintf(
			"%s: the service account may not list the objects of %s (HTTP 403); grant it roles/storage.objectAdmin on the bucket", secret, bucket)}
	}
	return &Problem{Reason: ReasonMisconfigured, Message: fmt.Sprintf(
		"%s: listing %s answered HTTP %d; check that the endpoint is the GCS JSON API (and spec.storage.gcs.insecure matches its scheme)", endpointField, bucket, resp.StatusCode)}
}

// serviceAccount reads a service account's JSON key. Its Problems name the Secret and key, never the content.
func serviceAccount(key []byte, secret string) (*jwt.Config, *Problem) {
	var sa struct {
		Type         string `json:"type"`
		ClientEmail  string `json:"client_email"`
		PrivateKey   string `json:"private_key"`
		PrivateKeyID string `json:"private_key_id"`
		TokenURI     string `json:"token_uri"`
	}
	if err := json.Unmarshal(key, &sa); err != nil || sa.Type != "service_account" || sa.ClientEmail == "" ||
		!strings.Contains(sa.PrivateKey, "PRIVATE KEY") {
		return nil, &Problem{Reason: ReasonCredentialsRejected, Message: fmt.Sprintf(
			"%s: key %s is not a service account's JSON key (type service_account with client_email and private_key); create a key with `gcloud iam service-accounts keys create` and put the file in the Secret",
			secret, GCSCredentialsKey)}
	}
	if sa.TokenURI == "" {
		sa.TokenURI = "https://oauth2.googleapis.com/token"
	}
	return &jwt.Config{
		Email: sa.ClientEmail, PrivateKey: []byte(sa.PrivateKey), PrivateKeyID: sa.PrivateKeyID,
		Scopes: []string{gcsReadScope}, TokenURL: sa.TokenURI,
	}, nil
}
