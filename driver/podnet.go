package driver

import (
	"context"
	"errors"
	"strings"

	"github.com/bpfmount/bpfmount/internal/cgrouppath"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/defaultroute"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader"
)

// defaultRouteInterface returns the name of the interface that holds the
// node's default route (see defaultroute.Interface), in the daemon's
// network namespace.
func defaultRouteInterface() (string, error) {
	name, err := defaultroute.Interface(nil)
	if errors.Is(err, defaultroute.ErrNone) {
		return "", fault.Errorf(fault.Precondition, "interface %s names the interface of the node's default route, and this node has no default route (IPv4 or IPv6) in its main table: name the interface instead", NodeDefault)
	}
	return name, err
}

// resolveNodeInterface turns interface node:default into the name of the
// default route's interface, before the policy decides on it (a rule's
// interfaces match the real name). The record's identity keeps that name.
func (d *Driver) resolveNodeInterface(vr *volumeRequest) error {
	if vr.load.Interface != NodeDefault {
		return nil
	}
	name, err := d.defaultRoute()
	if err != nil {
		return err
	}
	vr.load.Interface = name
	return nil
}

// Interface values naming the requesting pod's own interface, inside the
// pod's network namespace: "pod" is "pod:eth0".
const (
	PodInterface       = "pod"
	podInterfacePrefix = "pod:"
	defaultPodIface    = "eth0"
)

// isPodInterface reports whether an interface attribute names the pod's
// own interface.
func isPodInterface(v string) bool {
	return v == PodInterface || strings.HasPrefix(v, podInterfacePrefix)
}

// parsePodInterface checks interface: pod / pod:NAME. The program is
// loaded at publish and attached once the pod's sandbox has its network
// namespace (deferred.go); the identity names the pod's UID, never the
// namespace.
func (vr *volumeRequest) parsePodInterface(v string) error {
	name := defaultPodIface
	if v != PodInterface {
		name = strings.TrimPrefix(v, podInterfacePrefix)
		if name == "" {
			return invalid("volume attribute %q: %q names no interface: write %s (the pod's %s) or %sNAME", AttrInterface, v, PodInterface, defaultPodIface, podInterfacePrefix)
		}
		if err := checkIfname(name); err != nil {
			return err
		}
	}
	if !vr.fromPod {
		return invalid("volume attribute %q: %q is the requesting pod's own interface, and a local request comes from no pod: name a host interface", AttrInterface, v)
	}
	if !cgrouppath.ValidUID(vr.pod.UID) {
		return invalid("the pod UID %.64q (%s) is not a UUID, so the pod's sandbox cannot be found: interface %s needs the pod's UID from kubelet (set podInfoOnMount on the CSIDriver)", vr.pod.UID, keyPodUID, v)
	}
	vr.load.Interface = name
	vr.load.Pod = vr.pod.UID
	return nil
}

// policyInterface is the interface the policy matches: a pod's own
// interface as pod:NAME, so that a rule's node interface patterns (eth*)
// never grant it and pod:* grants nothing on the node.
func policyInterface(lr *loader.Request) string {
	if lr.Pod != "" && lr.Container == "" {
		return podInterfacePrefix + lr.Interface
	}
	return lr.Interface
}

// checkPodNetwork asks the container runtime about the pod of a request for
// its own interface, before anything is fetched or loaded: a hostNetwork
// pod has no interface of its own, and a runtime the driver cannot reach
// is the node's problem, said now rather than in a status nobody reads. A
// sandbox that does not exist yet is fine: the waiter attaches later.
func (d *Driver) checkPodNetwork(ctx context.Context, vr *volumeRequest) error {
	if vr.load.Container != "" {
		return d.checkContainerRuntime(vr)
	}
	if vr.load.Pod == "" {
		return nil
	}
	if d.opts.CRI == nil {
		return fault.Errorf(fault.Precondition, "interface %s needs the container runtime's CRI socket, and this driver has none: start it with --cri-endpoint (chart value criSocket)", policyInterface(&vr.load))
	}
	ctx, cancel := context.WithTimeout(ctx, criCallTimeout)
	defer cancel()
	sb, err := d.opts.CRI.PodSandbox(ctx, vr.load.Pod)
	switch {
	case errors.Is(err, cri.ErrNoSandbox):
		return nil
	case err != nil:
		return err
	case sb.HostNetwork:
		return hostNetworkError(vr.load.Interface)
	}
	return nil
}

// shownInterface is an identity's interface as list shows it: a pod's own
// as pod:NAME.
func shownInterface(id loader.Identity) string {
	if id.Pod != "" && id.Container == "" {
		return podInterfacePrefix + id.Interface
	}
	return id.Interface
}

// metricInterface is an identity's interface as a metric label: a pod's
// own is "pod", whatever its name. Pods choose those names, and the
// program is loaded before the interface exists, so the names are not
// bounded by the node's interfaces; "pod" is.
func metricInterface(id loader.Identity) string {
	if id.Pod != "" && id.Container == "" {
		return PodInterface
	}
	return id.Interface
}

func hostNetworkError(iface string) error {
	return fault.Errorf(fault.Precondition, "interface %s%s names the pod's own interface, and this pod uses the node's network (hostNetwork: true), so its interfaces are the node's: name a node interface (e.g. %s) instead", podInterfacePrefix, iface, NodeDefault)
}
