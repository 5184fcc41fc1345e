// Package critest is a fake container runtime for tests: a CRI
// RuntimeService on a unix socket (real gRPC, the k8s.io/cri-api service
// definitions) that answers the calls package cri makes from sandboxes the
// test runs, replaces and removes, and streams their events.
package critest

import (
	"context"
	"encoding/json"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PodUIDLabel is the label kubelet puts on a pod's sandboxes.
const PodUIDLabel = "io.kubernetes.pod.uid"

// Runtime answers ListPodSandbox, PodSandboxStatus, ListContainers and
// ContainerStatus from its State, and streams an event to every open
// GetContainerEvents call whenever a sandbox or a container of its helpers
// (RunSandbox, StopSandbox, RunContainer, ExitContainer) changes, as
// containerd and CRI-O do.
type Runtime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	mu    sync.Mutex
	state State
	calls int
	// noEvents answers GetContainerEvents with Unimplemented, as a
	// runtime without the event stream (containerd before 1.7) does.
	noEvents bool
	// endEvents answers GetContainerEvents with OK at once, before any
	// event, as CRI-O with enable_pod_events = false does.
	endEvents bool
	// name and version are what Version answers.
	name, version string
	streams       map[*stream]struct{}
	opened        int // streams opened, over the runtime's life
}

// stream is one open GetContainerEvents call.
type stream struct {
	events chan *runtimeapi.ContainerEventResponse
	broken chan struct{}
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
	r := &Runtime{state: State{Info: map[string]string{}, HostNet: map[string]bool{}, ContainerInfo: map[string]string{}}, streams: map[*stream]struct{}{},
		name: "containerd", version: "v2.0.0"}
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
	r.sandboxEvent(id, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
}

// RunHostNetworkSandbox adds a ready sandbox of a hostNetwork pod.
func (r *Runtime) RunHostNetworkSandbox(uid, id string) {
	r.Update(func(s *State) {
		s.Sandboxes = append(s.Sandboxes, Sandbox(id, uid, runtimeapi.PodSandboxState_SANDBOX_READY, time.Now().UnixNano()))
		s.HostNet[id] = true
	})
	r.sandboxEvent(id, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
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
	r.sandboxEvent(id, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
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
			// A copy: the answer is marshalled after the lock is
			// released, while the test may change the sandbox.
			out = append(out, proto.Clone(s).(*runtimeapi.PodSandbox))
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
	r.containerEvent(id, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT)
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
	r.containerEvent(id, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT)
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
			out = append(out, proto.Clone(c).(*runtimeapi.Container))
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

// SetEvents makes the runtime serve the event stream (the default) or
// answer GetContainerEvents with Unimplemented.
func (r *Runtime) SetEvents(on bool) {
	r.mu.Lock()
	r.noEvents = !on
	r.mu.Unlock()
}

// EndEventsAtOnce makes GetContainerEvents end at once with OK and no
// event, as CRI-O with enable_pod_events = false does (on true), or
// serve events again (false).
func (r *Runtime) EndEventsAtOnce(on bool) {
	r.mu.Lock()
	r.endEvents = on
	r.mu.Unlock()
}

// SetVersion sets the runtime name and version Version answers (by
// default containerd v2.0.0).
func (r *Runtime) SetVersion(name, version string) {
	r.mu.Lock()
	r.name, r.version = name, version
	r.mu.Unlock()
}

// Version answers with the runtime's name and version.
func (r *Runtime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: r.name, RuntimeVersion: r.version, RuntimeApiVersion: "v1"}, nil
}

// Streams returns how many event streams are open now, and how many were
// opened since the runtime started.
func (r *Runtime) Streams() (open, opened int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.streams), r.opened
}

// BreakStreams ends every open event stream with Unavailable, as a
// runtime that restarts does.
func (r *Runtime) BreakStreams() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for s := range r.streams {
		close(s.broken)
		delete(r.streams, s)
	}
}

// GetContainerEvents streams the runtime's events until the caller goes
// or the test breaks the stream (BreakStreams).
func (r *Runtime) GetContainerEvents(_ *runtimeapi.GetEventsRequest, srv runtimeapi.RuntimeService_GetContainerEventsServer) error {
	r.mu.Lock()
	if r.noEvents {
		r.mu.Unlock()
		return status.Error(codes.Unimplemented, "unknown method GetContainerEvents")
	}
	if r.endEvents {
		r.opened++
		r.mu.Unlock()
		return nil
	}
	s := &stream{events: make(chan *runtimeapi.ContainerEventResponse, 256), broken: make(chan struct{})}
	r.streams[s] = struct{}{}
	r.opened++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.streams, s)
		r.mu.Unlock()
	}()
	for {
		select {
		case <-srv.Context().Done():
			return nil
		case <-s.broken:
			return status.Error(codes.Unavailable, "the runtime restarts")
		case ev := <-s.events:
			if err := srv.Send(ev); err != nil {
				return err
			}
		}
	}
}

// sandboxEvent sends an event about sandbox id, with its status, as
// containerd does for a sandbox.
func (r *Runtime) sandboxEvent(id string, typ runtimeapi.ContainerEventType) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.emit(&runtimeapi.ContainerEventResponse{ContainerId: id, ContainerEventType: typ, CreatedAt: time.Now().UnixNano(), PodSandboxStatus: r.sandboxStatus(id)})
}

// containerEvent sends an event about container id, with its sandbox's
// status.
func (r *Runtime) containerEvent(id string, typ runtimeapi.ContainerEventType) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev := &runtimeapi.ContainerEventResponse{ContainerId: id, ContainerEventType: typ, CreatedAt: time.Now().UnixNano()}
	for _, c := range r.state.Containers {
		if c.Id == id {
			ev.PodSandboxStatus = r.sandboxStatus(c.PodSandboxId)
		}
	}
	r.emit(ev)
}

// sandboxStatus is sandbox id's status in an event: its pod's UID in the
// metadata and the labels. Caller holds r.mu.
func (r *Runtime) sandboxStatus(id string) *runtimeapi.PodSandboxStatus {
	for _, sb := range r.state.Sandboxes {
		if sb.Id == id {
			return &runtimeapi.PodSandboxStatus{Id: id, State: sb.State, Labels: maps.Clone(sb.Labels),
				Metadata: &runtimeapi.PodSandboxMetadata{Uid: sb.Labels[PodUIDLabel]}}
		}
	}
	return &runtimeapi.PodSandboxStatus{Id: id}
}

// emit queues ev on every open stream. Caller holds r.mu.
func (r *Runtime) emit(ev *runtimeapi.ContainerEventResponse) {
	for s := range r.streams {
		select {
		case s.events <- ev:
		default: // a stream nobody reads: the test did not want it
		}
	}
}
