package storageprobe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"

	"github.com/fsouza/fake-gcs-server/fakestorage"

	v1alpha1 "github.com/opstrace/opstrace/api/v1alpha1"
	"github.com/opstrace/opstrace/internal/testenv"
)

// The GCS probe against fake-gcs-server, in-process on 127.0.0.1, reached the way Cortex reaches an emulator
// (spec.storage.gcs.endpoint, no credentials sent). Rejected credentials cannot be tried offline: the emulator
// checks none, and Google's token endpoint is not reachable here; a malformed key is caught before any call.
func TestGCSProbeAgainstFakeGCSServer(t *testing.T) {
	server, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme: "http", Host: "127.0.0.1", Port: uint16(testenv.FreePort(t)), Writer: io.Discard,
		InitialObjects: []fakestorage.Object{{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "metrics", Name: "hello"}, Content: []byte("x")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(server.Stop)
	host := hostOf(t, server.URL())
	closed := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	gcs := func(bucket, endpoint string, insecure bool) v1alpha1.StorageSpec {
		return v1alpha1.StorageSpec{Type: v1alpha1.StorageGCS, GCS: &v1alpha1.GCSStorage{
			Bucket: bucket, Endpoint: endpoint, Insecure: insecure,
			CredentialsSecret: &v1alpha1.SecretReference{Name: "gcs-key"},
		}}
	}
	const key = `{"type": "service_account", "client_email": "x@p.iam.gserviceaccount.com", "private_key": "not a key"}`
	for _, tc := range []struct {
		name        string
		storage     v1alpha1.StorageSpec
		credentials map[string][]byte
		reason      string
		mention     []string
	}{
		{"good", gcs("metrics", host, true), nil, "", nil},
		{"bucket missing", gcs("no-such-bucket", host, true), nil, ReasonBucketNotFound,
			[]string{"spec.storage.gcs.bucket", `"no-such-bucket"`, "does not exist", "create it"}},
		{"nothing listens at the endpoint", gcs("metrics", closed, true), nil, ReasonUnreachable,
			[]string{"spec.storage.gcs.endpoint", closed, "connection refused"}},
		{"HTTPS to a plain-HTTP endpoint", gcs("metrics", host, false), nil, ReasonMisconfigured,
			[]string{"spec.storage.gcs.insecure", "insecure: true"}},
		{"malformed service account key", gcs("metrics", "", false), map[string][]byte{GCSCredentialsKey: []byte(key)},
			ReasonCredentialsRejected, []string{"Secret gcs-key", "spec.storage.gcs.credentialsSecret", GCSCredentialsKey, "not a service account"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Network{}.Probe(context.Background(), Target{Cluster: "ns/metrics", Storage: tc.storage,
				SecretName: "gcs-key", Credentials: tc.credentials})
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("probe of good settings: %v", err)
				}
				return
			}
			var problem *Problem
			if !errors.As(err, &problem) {
				t.Fatalf("probe: %v (%T), want a *Problem with reason %s", err, err, tc.reason)
			}
			if problem.Reason != tc.reason {
				t.Errorf("reason %s, want %s (message %q)", problem.Reason, tc.reason, problem.Message)
			}
			for _, want := range tc.mention {
				if !strings.Contains(problem.Message, want) {
					t.Errorf("message %q does not mention %q", problem.Message, want)
				}
			}
			if strings.Contains(problem.Message, "not a key") || strings.Contains(problem.Message, "x@p.iam") {
				t.Errorf("message %q quotes the key", problem.Message)
			}
			t.Logf("%s: %s", problem.Reason, problem.Message)
		})
	}
}

func hostOf(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}
