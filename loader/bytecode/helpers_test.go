package bytecode

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/bpfmount/bpfmount/internal/fault"
)

const testObjectPath = "../../deploy/examples/xdp-counter/bpf/xdpcounter_bpfel.o"

func testObject(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(testObjectPath)
	if err != nil {
		t.Fatalf("test object: %v", err)
	}
	return b
}

// buildTest makes a distinct image per filename (the layer differs).
func buildTest(t *testing.T, filename string) v1.Image {
	t.Helper()
	img, err := Build(testObject(t), filename, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOfImage(t *testing.T, img interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// testServer is a real registry (go-containerregistry's) on 127.0.0.1,
// wrapped to count GETs, require basic auth, corrupt a blob or hold blob
// downloads.
type testServer struct {
	srv  *httptest.Server
	host string

	mu      sync.Mutex
	gets    map[string]int
	user    string
	pass    string
	corrupt string        // blob digest served with one byte flipped
	block   chan struct{} // while non-nil, blob GETs wait for it to close
	arrived chan string   // receives blob GET paths that are held
	aborted chan string   // receives held blob GET paths whose client left
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	s := &testServer{gets: map[string]int{}, arrived: make(chan string, 100), aborted: make(chan string, 100)}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	s.srv = httptest.NewServer(s.wrap(reg))
	s.host = strings.TrimPrefix(s.srv.URL, "http://")
	t.Cleanup(s.close)
	return s
}

func (s *testServer) close() {
	s.mu.Lock()
	if s.block != nil {
		close(s.block)
		s.block = nil
	}
	s.mu.Unlock()
	s.srv.Close()
}

func (s *testServer) ref(repoTag string) string { return s.host + "/" + repoTag }

func (s *testServer) setAuth(user, pass string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.user, s.pass = user, pass
}

func (s *testServer) setCorrupt(digest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corrupt = digest
}

func (s *testServer) hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.block = make(chan struct{})
}

func (s *testServer) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.block != nil {
		close(s.block)
		s.block = nil
	}
}

func (s *testServer) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets[path]
}

func (s *testServer) resetCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets = map[string]int{}
}

func (s *testServer) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		user, pass, corrupt, block := s.user, s.pass, s.corrupt, s.block
		if r.Method == http.MethodGet {
			s.gets[r.URL.Path]++
		}
		s.mu.Unlock()
		if user != "" {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
				return
			}
		}
		isBlobGet := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
		if isBlobGet && block != nil {
			s.arrived <- r.URL.Path
			select {
			case <-block:
			case <-r.Context().Done():
				s.aborted <- r.URL.Path
				return
			}
		}
		if isBlobGet && corrupt != "" && strings.HasSuffix(r.URL.Path, "/blobs/"+corrupt) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			if len(body) > 0 {
				body[len(body)/2] ^= 0xff
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(body)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// push writes img to the test registry (as the test's own client, with the
// server's credentials if any).
func (s *testServer) push(t *testing.T, repoTag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(s.ref(repoTag))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, s.clientAuth()...); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
	return digestOfImage(t, img)
}

func (s *testServer) pushIndex(t *testing.T, repoTag string, idx v1.ImageIndex) string {
	t.Helper()
	ref, err := name.ParseReference(s.ref(repoTag))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx, s.clientAuth()...); err != nil {
		t.Fatalf("push index %s: %v", repoTag, err)
	}
	return digestOfImage(t, idx)
}

func (s *testServer) clientAuth() []remote.Option {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.user == "" {
		return nil
	}
	return []remote.Option{remote.WithAuth(&authn.Basic{Username: s.user, Password: s.pass})}
}

// newReg opens a Registry on a fresh (or the given) cache dir.
func newReg(t *testing.T, opts RegistryOptions) *Registry {
	t.Helper()
	if opts.CacheDir == "" {
		opts.CacheDir = t.TempDir()
	}
	r, err := NewRegistry(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func wantKind(t *testing.T, err error, k fault.Kind, contains ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want a %s error", k)
	}
	t.Logf("%s error: %v", k, err)
	if got := fault.Of(err); got != k {
		t.Fatalf("got a %s error (%v), want %s", got, err, k)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("error %q does not mention %q", err, c)
		}
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// cacheFiles lists the regular files under dir (relative paths).
func cacheFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func blobFiles(t *testing.T, dir string) []string {
	var out []string
	for _, f := range cacheFiles(t, dir) {
		if strings.HasPrefix(f, "blobs/") {
			out = append(out, f)
		}
	}
	return out
}

func genKey(t *testing.T) (privPEM, pubPEM []byte, key *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), k
}

func tarOf(t *testing.T, files map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipOf(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
