package bytecode

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/bpfmount/bpfmount/internal/fault"
)

const (
	testUser = "bpf-puller"
	testPass = "s3cret-Pa55word-9f8e7d"
)

func dockerConfigJSON(host, user, pass string) []byte {
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	return []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, auth))
}

func TestRegistryAuth(t *testing.T) {
	ts := newTestServer(t)
	ts.setAuth(testUser, testPass)
	want := ts.push(t, "private/prog:v1", buildTest(t, "a.o"))
	ref := ts.ref("private/prog:v1")

	good := dockerConfigJSON(ts.host, testUser, testPass)
	bad := dockerConfigJSON(ts.host, testUser, "wrong")
	nodeGood := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(nodeGood, []byte(fmt.Sprintf(`{"auths":{"http://%s/v2/":{"username":%q,"password":%q}}}`, ts.host, testUser, testPass)), 0o600); err != nil {
		t.Fatal(err)
	}
	nodeBad := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(nodeBad, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	otherHost := dockerConfigJSON("registry.example", testUser, testPass)

	dirs := map[string]string{}
	for _, c := range []struct {
		name     string
		secret   []byte
		nodePath string
		ref      string
		kind     fault.Kind // Internal means success
	}{
		{name: "pull secret", secret: good, kind: fault.Internal},
		{name: "node config", nodePath: nodeGood, kind: fault.Internal},
		{name: "pull secret before node config", secret: good, nodePath: nodeBad, kind: fault.Internal},
		{name: "secret for another host falls back to node config", secret: otherHost, nodePath: nodeGood, kind: fault.Internal},
		{name: "missing node config file", nodePath: filepath.Join(t.TempDir(), "absent.json"), kind: fault.PermissionDenied},
		{name: "bad password", secret: bad, kind: fault.PermissionDenied},
		{name: "bad node password", nodePath: nodeBad, kind: fault.PermissionDenied},
		{name: "no credentials", kind: fault.PermissionDenied},
		{name: "unknown repository", secret: good, ref: ts.ref("private/absent:v1"), kind: fault.NotFound},
		{name: "unknown tag", secret: good, ref: ts.ref("private/prog:v9"), kind: fault.NotFound},
		{name: "malformed secret", secret: []byte(`{"auths":` + testPass), kind: fault.Invalid},
	} {
		dir := t.TempDir() // the parent's: checked after the subtests
		dirs[c.name] = dir
		t.Run(c.name, func(t *testing.T) {
			r := newReg(t, RegistryOptions{CacheDir: dir, DockerConfigPath: c.nodePath})
			rf := ref
			if c.ref != "" {
				rf = c.ref
			}
			im, err := r.Fetch(ctxT(t), Request{Reference: rf, DockerConfigJSON: c.secret})
			if c.kind == fault.Internal {
				if err != nil || im.Digest != want {
					t.Fatalf("%v %v", im, err)
				}
				return
			}
			wantKind(t, err, c.kind, rf)
			if bytes.Contains([]byte(err.Error()), []byte(testPass)) {
				t.Errorf("error quotes the password: %v", err)
			}
		})
	}

	// Credentials never reach the cache.
	secrets := [][]byte{[]byte(testPass), []byte(base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPass))), []byte(testUser)}
	for name, dir := range dirs {
		for _, f := range cacheFiles(t, dir) {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range secrets {
				if bytes.Contains(b, s) {
					t.Errorf("%s: cache file %s contains a credential", name, f)
				}
			}
		}
	}
}

// Pulls with different credentials are not shared: a bad secret must not
// ride on a good one's pull.
func TestCredentialsSeparatePulls(t *testing.T) {
	ts := newTestServer(t)
	ts.setAuth(testUser, testPass)
	ts.push(t, "private/prog:v1", buildTest(t, "a.o"))
	r := newReg(t, RegistryOptions{})
	ref := ts.ref("private/prog:v1")

	ts.hold()
	goodErr := make(chan error, 1)
	go func() {
		_, err := r.Fetch(ctxT(t), Request{Reference: ref, DockerConfigJSON: dockerConfigJSON(ts.host, testUser, testPass)})
		goodErr <- err
	}()
	<-ts.arrived
	_, err := r.Fetch(ctxT(t), Request{Reference: ref, DockerConfigJSON: dockerConfigJSON(ts.host, testUser, "wrong")})
	wantKind(t, err, fault.PermissionDenied)
	ts.release()
	if err := <-goodErr; err != nil {
		t.Fatal(err)
	}
}

func TestDockerConfigLookup(t *testing.T) {
	cfg, err := parseDockerConfig([]byte(`{"auths":{
		"registry.example": {"username": "host", "password": "p"},
		"https://registry.example/v1/": {"username": "url", "password": "p"},
		"registry.example/team": {"username": "team", "password": "p"},
		"registry.example/team/deep": {"username": "deep", "password": "p"},
		"*.mirror.example": {"username": "glob", "password": "p"},
		"registry.example:5000": {"username": "port", "password": "p"},
		"https://` + name.DefaultRegistry + `/v1/": {"auth": "` + base64.StdEncoding.EncodeToString([]byte("hub:p:with:colons")) + `"}
	}}`))
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{
		"registry.example/other/x:v1":     "url", // "host" and "url" tie on specificity; sorted first wins
		"registry.example/team/x:v1":      "team",
		"registry.example/team/deep/x:v1": "deep",
		"registry.example/teamx/x:v1":     "url",
		"eu.mirror.example/x:v1":          "glob",
		"a.b.mirror.example/x:v1":         "",
		"registry.example:5000/x:v1":      "port",
		"library/busybox:latest":          "hub",
		"elsewhere.example/x:v1":          "",
	} {
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		a, err := cfg.lookup(r.Context())
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if a != nil {
			got = a.Username
		}
		if got != want {
			t.Errorf("%s: credentials of %q, want %q", ref, got, want)
		}
	}
	a, _ := cfg.lookup(name.MustParseReference("busybox").Context())
	if a == nil || a.Password != "p:with:colons" {
		t.Errorf("auth with colons in the password: %+v", a)
	}

	// Legacy .dockercfg: the bare map.
	legacy, err := parseDockerConfig([]byte(`{"registry.example":{"username":"u","password":"p"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := legacy.lookup(name.MustParseReference("registry.example/x").Context()); a == nil || a.Username != "u" {
		t.Errorf("legacy format: %+v", a)
	}
	for _, bad := range []string{`[]`, `{"auths":[]}`, `{"auths":{"h.example":{"auth":"!!"}}}`, `{"auths":{"h.example":{"auth":"bm9jb2xvbg=="}}}`} {
		c, err := parseDockerConfig([]byte(bad))
		if err == nil {
			_, err = c.lookup(name.MustParseReference("h.example/x").Context())
		}
		if err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
