package testenv

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Registry is a real OCI registry (go-containerregistry's) on 127.0.0.1,
// counting the GETs it serves.
type Registry struct {
	Host string
	srv  *httptest.Server

	mu       sync.Mutex
	gets     map[string]int // "manifest" or "blob" -> count
	requests int            // every request, of any method
}

// StartRegistry starts a registry for the test.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{gets: map[string]int{}}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests++
		r.mu.Unlock()
		if req.Method == http.MethodGet {
			r.mu.Lock()
			switch {
			case strings.Contains(req.URL.Path, "/manifests/"):
				r.gets["manifest"]++
			case strings.Contains(req.URL.Path, "/blobs/"):
				r.gets["blob"]++
			}
			r.mu.Unlock()
		}
		inner.ServeHTTP(w, req)
	}))
	r.Host = strings.TrimPrefix(r.srv.URL, "http://")
	t.Cleanup(r.srv.Close)
	return r
}

// Stop stops serving (a registry gone away).
func (r *Registry) Stop() { r.srv.Close() }

// Gets returns and resets the GET counts.
func (r *Registry) Gets() (manifests, blobs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, b := r.gets["manifest"], r.gets["blob"]
	r.gets = map[string]int{}
	return m, b
}

// Requests returns and resets the count of every request, of any method.
func (r *Registry) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.requests
	r.requests = 0
	return n
}
