// Package cri finds a pod's sandbox and its network namespace through the
// container runtime's CRI API (containerd, CRI-O) on the runtime's socket.
//
// Kubelet mounts a pod's volumes before it creates the pod's sandbox, so
// the sandbox, and with it the pod's network namespace, may not exist yet
// when a volume is published: callers ask again until it appears, when
// the runtime's events say the pod changed (WatchPods) or at intervals.
package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// podUIDLabel is the label kubelet puts on every sandbox it creates.
const podUIDLabel = "io.kubernetes.pod.uid"

// ErrNoSandbox means the pod has no ready sandbox (yet).
var ErrNoSandbox = errors.New("no ready sandbox")

// Client talks to one runtime socket.
type Client struct {
	endpoint string
	conn     *grpc.ClientConn
	rt       runtimeapi.RuntimeServiceClient
}

// Dial prepares a client of the runtime at endpoint (unix:///path or an
// absolute path). It does not connect: the first call does.
func Dial(endpoint string) (*Client, error) {
	path := strings.TrimPrefix(endpoint, "unix://")
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, fmt.Errorf("container runtime endpoint %q: want unix:///absolute/path of the runtime's CRI socket", endpoint)
	}
	conn, err := grpc.NewClient("passthrough:///cri", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}))
	if err != nil {
		return nil, fmt.Errorf("container runtime endpoint %q: %w", endpoint, err)
	}
	return &Client{endpoint: endpoint, conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Sandbox is a pod's current sandbox.
type Sandbox struct {
	ID string
	// Netns is the path of its network namespace, as the daemon can open
	// it (the runtime's bind mount, or /proc/<pid>/ns/net).
	Netns string
	// HostNetwork is true for a hostNetwork pod: its interfaces are the
	// node's, and Netns is empty.
	HostNetwork bool
}

// PodSandbox returns the pod's ready sandbox, the newest when a
// replacement is starting beside the old one. With none it fails with
// ErrNoSandbox (fault NotFound).
func (c *Client) PodSandbox(ctx context.Context, uid string) (*Sandbox, error) {
	if !cgrouppath.ValidUID(uid) {
		return nil, fault.Errorf(fault.Invalid, "pod UID %.64q is not a UUID", uid)
	}
	list, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		LabelSelector: map[string]string{podUIDLabel: uid},
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return nil, c.callError("listing the sandboxes of pod "+uid, err)
	}
	var ready []*runtimeapi.PodSandbox
	for _, s := range list.GetItems() {
		// The runtime filtered already; a fake or old one may not have.
		if s.GetState() == runtimeapi.PodSandboxState_SANDBOX_READY && s.GetLabels()[podUIDLabel] == uid {
			ready = append(ready, s)
		}
	}
	if len(ready) == 0 {
		return nil, fault.Wrap(fault.NotFound, fmt.Errorf("pod %s: %w", uid, ErrNoSandbox))
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].GetCreatedAt() > ready[j].GetCreatedAt() })
	id := ready[0].GetId()
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return nil, c.callError("reading the status of sandbox "+id, err)
	}
	sb := &Sandbox{ID: id}
	if st.GetStatus().GetLinux().GetNamespaces().GetOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE {
		sb.HostNetwork = true
		return sb, nil
	}
	if sb.Netns, err = netnsOf(st.GetInfo()); err != nil {
		return nil, fmt.Errorf("sandbox %s of pod %s (runtime %s): %w", id, uid, c.endpoint, err)
	}
	return sb, nil
}

// verboseInfo is what containerd and CRI-O put in a verbose status's
// "info": the sandbox's OCI runtime spec and its process.
type verboseInfo struct {
	Pid         int `json:"pid"`
	RuntimeSpec *struct {
		Linux *struct {
			Namespaces []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	} `json:"runtimeSpec"`
}

// netnsOf finds the network namespace in a verbose status: the path the
// runtime spec joins, else the sandbox process's own.
func netnsOf(info map[string]string) (string, error) {
	raw, ok := info["info"]
	if !ok {
		return "", errors.New("the runtime's verbose status has no info: cannot find the pod's network namespace")
	}
	var vi verboseInfo
	if err := json.Unmarshal([]byte(raw), &vi); err != nil {
		return "", fmt.Errorf("the runtime's verbose status info is not JSON: %v", err)
	}
	if vi.RuntimeSpec != nil && vi.RuntimeSpec.Linux != nil {
		for _, ns := range vi.RuntimeSpec.Linux.Namespaces {
			if ns.Type == "network" && ns.Path != "" {
				if !filepath.IsAbs(ns.Path) || filepath.Clean(ns.Path) != ns.Path {
					return "", fmt.Errorf("the runtime names network namespace %.200q, not an absolute, clean path", ns.Path)
				}
				return ns.Path, nil
			}
		}
	}
	if vi.Pid > 0 {
		return "/proc/" + strconv.Itoa(vi.Pid) + "/ns/net", nil
	}
	return "", errors.New("the runtime's verbose status names neither a network namespace path nor the sandbox's process")
}

// callError classifies a failed call: an unreachable runtime is a node
// problem (Unavailable), not the request's.
func (c *Client) callError(what string, err error) error {
	return fault.Wrap(fault.Unavailable, fmt.Errorf("%s through the container runtime at %s: %w", what, c.endpoint, err))
}

// containerNameLabel is the label kubelet puts on every container.
const containerNameLabel = "io.kubernetes.container.name"

// ErrNoContainer means the pod has no running container of that name
// (not started yet, restarting, or gone).
var ErrNoContainer = errors.New("no running container")

// Container is a running container of a pod.
type Container struct {
	ID string
	// PID is its main process, as the daemon sees it (the daemon runs in
	// the node's PID namespace).
	PID int
}

// PodContainer returns the running container name of the pod's current
// sandbox, the newest when a restart is starting beside the old one.
// With none (or no sandbox) it fails with ErrNoContainer (fault NotFound).
func (c *Client) PodContainer(ctx context.Context, uid, name string) (*Container, error) {
	sb, err := c.PodSandbox(ctx, uid)
	if errors.Is(err, ErrNoSandbox) {
		return nil, fault.Wrap(fault.NotFound, fmt.Errorf("pod %s has no sandbox: %w", uid, ErrNoContainer))
	}
	if err != nil {
		return nil, err
	}
	list, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		PodSandboxId:  sb.ID,
		LabelSelector: map[string]string{containerNameLabel: name},
		State:         &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
	}})
	if err != nil {
		return nil, c.callError("listing the containers of pod "+uid, err)
	}
	var running []*runtimeapi.Container
	for _, ct := range list.GetContainers() {
		if ct.GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING && ct.GetPodSandboxId() == sb.ID && ct.GetLabels()[containerNameLabel] == name {
			running = append(running, ct)
		}
	}
	if len(running) == 0 {
		return nil, fault.Wrap(fault.NotFound, fmt.Errorf("container %s of pod %s: %w", name, uid, ErrNoContainer))
	}
	sort.Slice(running, func(i, j int) bool { return running[i].GetCreatedAt() > running[j].GetCreatedAt() })
	id := running[0].GetId()
	st, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return nil, c.callError("reading the status of container "+id, err)
	}
	var vi verboseInfo
	if raw, ok := st.GetInfo()["info"]; ok {
		if err := json.Unmarshal([]byte(raw), &vi); err != nil {
			return nil, fmt.Errorf("container %s of pod %s: the runtime's verbose status info is not JSON: %v", name, uid, err)
		}
	}
	if vi.Pid <= 0 {
		return nil, fmt.Errorf("container %s of pod %s (runtime %s): the runtime's verbose status names no process", name, uid, c.endpoint)
	}
	return &Container{ID: id, PID: vi.Pid}, nil
}
