package testenv

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// LoopbackServer serves h over plain HTTP on 127.0.0.1 (httptest may pick another local address) until the
// test ends.
func LoopbackServer(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := &httptest.Server{Listener: listener, Config: &http.Server{Handler: h}}
	server.Start()
	t.Cleanup(server.Close)
	return server
}
