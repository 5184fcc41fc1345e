package cri

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// fakeRuntime answers the CRI calls the client makes, from a list of
// sandboxes, as a runtime on a unix socket would.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	mu        sync.Mutex
	sandboxes []*runtimeapi.PodSandbox
	info      map[string]string // sandbox ID -> verbose info
	hostNet   map[string]bool
}

func (f *fakeRuntime) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*runtimeapi.PodSandbox
	for _, s := range f.sandboxes {
		ok := true
		for k, v := range req.GetFilter().GetLabelSelector() {
			ok = ok && s.Labels[k] == v
		}
		if st := req.GetFilter().GetState(); st != nil && st.State != s.State {
			ok = false
		}
		if ok {
			out = append(out, s)
		}
	}
	return &runtimeapi.ListPodSandboxResponse{Items: out}, nil
}

func (f *fakeRuntime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mode := runtimeapi.NamespaceMode_POD
	if f.hostNet[req.PodSandboxId] {
		mode = runtimeapi.NamespaceMode_NODE
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: &runtimeapi.PodSandboxStatus{
		Id: req.PodSandboxId, Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{Options: &runtimeapi.NamespaceOption{Network: mode}}},
	}}
	if req.Verbose {
		resp.Info = map[string]string{"info": f.info[req.PodSandboxId]}
	}
	return resp, nil
}

func serve(t *testing.T, f *fakeRuntime) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "cri.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return "unix://" + sock
}

const uid = "8f3c2a1e-5b6d-4c7e-9f80-1a2b3c4d5e6f"

func sandbox(id, podUID string, state runtimeapi.PodSandboxState, created int64) *runtimeapi.PodSandbox {
	return &runtimeapi.PodSandbox{Id: id, State: state, CreatedAt: created, Labels: map[string]string{podUIDLabel: podUID}}
}

func TestPodSandbox(t *testing.T) {
	f := &fakeRuntime{
		info: map[string]string{
			// containerd: the runtime spec joins the CNI's netns.
			"old": `{"pid": 10, "runtimeSpec": {"linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-old"}]}}}`,
			"new": `{"pid": 11, "runtimeSpec": {"linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/cni-new"}]}}}`,
			// A runtime that gives only the sandbox's process.
			"pidonly": `{"pid": 4242}`,
			"bad":     `{"runtimeSpec": {"linux": {"namespaces": [{"type": "network", "path": "../../etc"}]}}}`,
		},
		hostNet: map[string]bool{"host": true},
	}
	ep := serve(t, f)
	c, err := Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Kubelet mounts volumes before the sandbox exists.
	if _, err := c.PodSandbox(ctx, uid); !errors.Is(err, ErrNoSandbox) || fault.Of(err) != fault.NotFound {
		t.Fatalf("no sandbox yet: got %v", err)
	}
	f.mu.Lock()
	f.sandboxes = []*runtimeapi.PodSandbox{
		sandbox("other", "00000000-0000-0000-0000-000000000000", runtimeapi.PodSandboxState_SANDBOX_READY, 5),
		sandbox("old", uid, runtimeapi.PodSandboxState_SANDBOX_READY, 1),
	}
	f.mu.Unlock()
	sb, err := c.PodSandbox(ctx, uid)
	if err != nil || sb.ID != "old" || sb.Netns != "/var/run/netns/cni-old" || sb.HostNetwork {
		t.Fatalf("got %+v %v", sb, err)
	}
	// A replacement: the old one stops, the new one is ready.
	f.mu.Lock()
	f.sandboxes[1].State = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	f.sandboxes = append(f.sandboxes, sandbox("new", uid, runtimeapi.PodSandboxState_SANDBOX_READY, 2))
	f.mu.Unlock()
	if sb, err := c.PodSandbox(ctx, uid); err != nil || sb.ID != "new" || sb.Netns != "/var/run/netns/cni-new" {
		t.Fatalf("after replacement: %+v %v", sb, err)
	}
	// Both ready for a moment: the newest wins.
	f.mu.Lock()
	f.sandboxes[1].State = runtimeapi.PodSandboxState_SANDBOX_READY
	f.mu.Unlock()
	if sb, err := c.PodSandbox(ctx, uid); err != nil || sb.ID != "new" {
		t.Fatalf("two ready: %+v %v", sb, err)
	}

	for _, tc := range []struct {
		id, netns string
		host      bool
		err       string
	}{
		{id: "pidonly", netns: "/proc/4242/ns/net"},
		{id: "host", host: true},
		{id: "bad", err: "not an absolute, clean path"},
	} {
		other := "11111111-2222-3333-4444-" + strings.Repeat("5", 12)
		f.mu.Lock()
		f.sandboxes = []*runtimeapi.PodSandbox{sandbox(tc.id, other, runtimeapi.PodSandboxState_SANDBOX_READY, 1)}
		f.mu.Unlock()
		sb, err := c.PodSandbox(ctx, other)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: got %+v %v", tc.id, sb, err)
			}
			continue
		}
		if err != nil || sb.Netns != tc.netns || sb.HostNetwork != tc.host {
			t.Errorf("%s: got %+v %v", tc.id, sb, err)
		}
	}
}

// A runtime that does not answer is Unavailable, naming its socket.
func TestRuntimeUnreachable(t *testing.T) {
	ep := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	c, err := Dial(ep)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = c.PodSandbox(ctx, uid)
	if fault.Of(err) != fault.Unavailable || !strings.Contains(err.Error(), ep) {
		t.Fatalf("got %v", err)
	}
	if _, err := c.PodSandbox(ctx, "../x"); fault.Of(err) != fault.Invalid {
		t.Fatalf("a UID that is not a UUID: got %v", err)
	}
	if _, err := Dial("relative/cri.sock"); err == nil {
		t.Fatal("a relative endpoint was accepted")
	}
}
