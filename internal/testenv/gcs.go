package testenv

import (
	"io"
	"testing"

	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
)

// FakeGCS is fake-gcs-server running in the test process on 127.0.0.1, and a GCS client for it.
type FakeGCS struct {
	Server *fakestorage.Server
	Client *storage.Client
}

// StartFakeGCS starts fake-gcs-server on a free loopback port and stops it when the test ends. It
// implements buckets (create with its 409 on a taken name, get, list, delete with its 412 on a non-empty
// bucket) and objects; it ignores bucket labels, lifecycle rules, uniform bucket-level access, public
// access prevention and IAM policies (v1.54.0), which tests must emulate and say so.
func StartFakeGCS(t testing.TB) *FakeGCS {
	t.Helper()
	server, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme: "http", Host: "127.0.0.1", Port: uint16(FreePort(t)), Writer: io.Discard,
	})
	if err != nil {
		t.Fatalf("start fake-gcs-server: %v", err)
	}
	t.Cleanup(server.Stop)
	client := server.Client()
	t.Cleanup(func() { _ = client.Close() })
	return &FakeGCS{Server: server, Client: client}
}
