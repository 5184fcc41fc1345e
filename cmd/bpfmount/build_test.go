package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The client-only build links none of the daemon's packages: in Go every
// linked package's init runs at start, so this is what keeps `bpfmount
// publish` and friends starting in a few milliseconds.
func TestClientBuildLinksNoDaemonPackages(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "bpfmount_cli", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	heavy := []string{
		"github.com/bpfmount/bpfmount/driver", "github.com/bpfmount/bpfmount/loader",
		"github.com/cilium/ebpf", "github.com/sigstore/", "github.com/prometheus/",
		"github.com/google/go-containerregistry", "k8s.io/",
	}
	for _, d := range deps {
		if d == "github.com/bpfmount/bpfmount/driver/admin/adminapi" {
			continue
		}
		for _, h := range heavy {
			if d == h || strings.HasPrefix(d, strings.TrimSuffix(h, "/")+"/") {
				t.Errorf("the client build links %s", d)
			}
		}
	}
}

// The client build's serve and image exec bpfmountd beside it with the
// same arguments, and say what to install when it is missing.
func TestClientBuildForwardsToDaemon(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the client")
	}
	dir := t.TempDir()
	cli := filepath.Join(dir, "bpfmount")
	build := exec.Command("go", "build", "-tags", "bpfmount_cli", "-o", cli, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags bpfmount_cli: %v\n%s", err, out)
	}
	empty := t.TempDir()
	runCLI := func(args ...string) (string, error) {
		c := exec.Command(cli, args...)
		c.Env = append(os.Environ(), "PATH="+empty)
		out, err := c.CombinedOutput()
		return string(out), err
	}

	out, err := runCLI("serve", "--endpoint", "unix:///x.sock")
	if err == nil || !strings.Contains(out, "bpfmountd") || !strings.Contains(out, "install both") {
		t.Errorf("serve without bpfmountd: %v, %q; want an error saying what to install", err, out)
	}
	if h, _ := runCLI("--help"); !strings.Contains(h, "serve") || !strings.Contains(h, "image") || strings.Contains(h, "alsologtostderr") {
		t.Errorf("the client's help:\n%s", h)
	}

	fake := "#!/bin/sh\necho \"daemon: $*\"\nexit 3\n"
	if err := os.WriteFile(filepath.Join(dir, "bpfmountd"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI("serve", "--endpoint", "unix:///x.sock", "--help")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || out != "daemon: serve --endpoint unix:///x.sock --help\n" {
		t.Errorf("serve: %v, %q; want bpfmountd's output and exit code", err, out)
	}
	if out, _ := runCLI("image", "build", "-o", "l", "x.o"); out != "daemon: image build -o l x.o\n" {
		t.Errorf("image build: %q", out)
	}

	// A client build installed as bpfmountd is refused, not exec'd in a loop.
	if b, err := os.ReadFile(cli); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(filepath.Join(dir, "bpfmountd"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI("serve")
	if err == nil || !strings.Contains(out, "is the client-only build too") {
		t.Errorf("serve with a client build as bpfmountd: %v, %q", err, out)
	}
}
