// Package critest is a fake container runtime for tests: a CRI
// RuntimeService on a unix socket (real gRPC, the k8s.io/cri-api service
// definitions) that answers the calls package cri makes from sandboxes the
// test runs, replaces and removes.
package critest

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PodUIDLabel is the label kubelet puts on a pod's sandboxes.
const PodUIDLabel = "io.kubernetes.pod.uid"

// Runtime answers ListPodSandbox and PodSandboxStatus.
type Runtime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	mu    sync.Mutex
	state State
	calls int
}

// State is what the runtime holds: its sandboxes, each one's verbose
// status info (the JSON a runtime puts under "info"), and which sandboxes
// use the node's network.
type State struct {
	Sandboxes []*runtimeapi.PodSandbox
	Info      map[string]string
	HostNet   map[string]bool
	// Containers and their verbose info (the main process's "pid").
	Containers    []*runtimeapi.Container
	ContainerInfo map[string]string
}

// Start serves a new Runtime on a socket in a temporary directory until
// the test ends, and returns it with its endpoint (unix:///path).
func Start(t testing.TB) (*Runtime, string) {
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
	r := &Runtime{state: State{Info: map[string]string{}, HostNet: map[string]bool{}, ContainerInfo: map[string]string{}}}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, r)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return r, "unix://" + sock
}

// Update changes the runtime's state under its lock.
func (r *Runtime) Update(fn func(*State)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(&r.state)
}

// Calls counts the calls answered.
func (r *Runtime) Calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

// RunSandbox adds a ready sandbox of pod uid whose network namespace is
// netns, newer than every other, with the verbose info containerd gives
// (the runtime spec joins the namespace).
func (r *Runtime) RunSandbox(uid, id, netns string) {
	info, _ := json.Marshal(map[string]any{"pid": 1, "runtimeSpec": map[string]any{"linux": map[string]any{
		"namespaces": []map[string]string{{"type": "pid"}, {"type": "network", "path": netns}}}}})
	r.Update(func(s *State) {
		s.Sandboxes = append(s.Sandboxes, Sandbox(id, uid, runtimeapi.PodSandboxState_SANDBOX_READY, time.Now().UnixNano()))
		s.Info[id] = string(info)
	})
}

// RunHostNetworkSandbox adds a ready sandbox of a hostNetwork pod.
func (r *Runtime) RunHostNetworkSandbox(uid, id string) {
	r.Update(func(s *State) {
		s.Sandboxes = append(s.Sandboxes, Sandbox(id, uid, runtimeapi.PodSandboxState_SANDBOX_READY, time.Now().UnixNano()))
		s.HostNet[id] = true
	})
}

// StopSandbox makes a sandbox not ready, as a dead sandbox is until
// kubelet removes it.
func (r *Runtime) StopSandbox(id string) {
	r.Update(func(s *State) {
		for _, sb := range s.Sandboxes {
			if sb.Id == id {
				sb.State = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
			}
		}
	})
}

// Sandbox is a sandbox of pod uid.
func Sandbox(id, uid string, state runtimeapi.PodSandboxState, created int64) *runtimeapi.PodSandbox {
	return &runtimeapi.PodSandbox{Id: id, State: state, CreatedAt: created, Labels: map[string]string{PodUIDLabel: uid}}
}

// ListPodSandbox filters by label and state, as runtimes do.
func (r *Runtime) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	var out []*runtimeapi.PodSandbox
	for _, s := range r.state.Sandboxes {
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

// PodSandboxStatus gives the sandbox's network mode and, verbose, its info.
func (r *Runtime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	mode := runtimeapi.NamespaceMode_POD
	if r.state.HostNet[req.PodSandboxId] {
		mode = runtimeapi.NamespaceMode_NODE
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: &runtimeapi.PodSandboxStatus{
		Id: req.PodSandboxId, Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{Options: &runtimeapi.NamespaceOption{Network: mode}}},
	}}
	if req.Verbose {
		resp.Info = map[string]string{"info": r.state.Info[req.PodSandboxId]}
	}
	return resp, nil
}

// ContainerNameLabel is the label kubelet puts on a container.
const ContainerNameLabel = "io.kubernetes.container.name"

// RunContainer adds a running container name, with id, to sandbox
// sandboxID of pod uid, newer than every other, whose main process is
// pid.
func (r *Runtime) RunContainer(uid, sandboxID, name, id string, pid int) {
	info, _ := json.Marshal(map[string]any{"pid": pid})
	r.Update(func(s *State) {
		s.Containers = append(s.Containers, &runtimeapi.Container{Id: id, PodSandboxId: sandboxID,
			State: runtimeapi.ContainerState_CONTAINER_RUNNING, CreatedAt: time.Now().UnixNano(),
			Labels: map[string]string{PodUIDLabel: uid, ContainerNameLabel: name}})
		s.ContainerInfo[id] = string(info)
	})
}

// ExitContainer makes a container exited.
func (r *Runtime) ExitContainer(id string) {
	r.Update(func(s *State) {
		for _, c := range s.Containers {
			if c.Id == id {
				c.State = runtimeapi.ContainerState_CONTAINER_EXITED
			}
		}
	})
}

// ListContainers filters by sandbox, label and state, as runtimes do.
func (r *Runtime) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	f := req.GetFilter()
	var out []*runtimeapi.Container
	for _, c := range r.state.Containers {
		ok := f.GetPodSandboxId() == "" || c.PodSandboxId == f.GetPodSandboxId()
		for k, v := range f.GetLabelSelector() {
			ok = ok && c.Labels[k] == v
		}
		if st := f.GetState(); st != nil && st.State != c.State {
			ok = false
		}
		if ok {
			out = append(out, c)
		}
	}
	return &runtimeapi.ListContainersResponse{Containers: out}, nil
}

// ContainerStatus gives, verbose, the container's info.
func (r *Runtime) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	resp := &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: req.ContainerId}}
	if req.Verbose {
		resp.Info = map[string]string{"info": r.state.ContainerInfo[req.ContainerId]}
	}
	return resp, nil
}
