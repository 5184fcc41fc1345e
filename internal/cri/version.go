package cri

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RuntimeVersion returns the runtime's name and version (CRI Version).
func (c *Client) RuntimeVersion(ctx context.Context) (name, version string, err error) {
	v, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return "", "", c.callError("asking its version", err)
	}
	return v.GetRuntimeName(), v.GetRuntimeVersion(), nil
}

// EventsSafe reports whether a second subscriber to the runtime's event
// stream leaves kubelet's own (Evented PLEG) whole, and if not, why.
// containerd before 2.0 serves one shared channel that every
// GetContainerEvents call reads from, so subscribers split the events
// between them; older CRI-O had one source too. Only containerd 2.0 and
// later are known to give each subscriber every event; a version that
// does not parse is not taken as one.
func EventsSafe(name, version string) (bool, string) {
	if name != "containerd" {
		return false, fmt.Sprintf("runtime %.64q is not containerd 2.0 or later, whose event stream alone is known to serve several subscribers", name)
	}
	major, ok := majorVersion(version)
	switch {
	case !ok:
		return false, fmt.Sprintf("containerd's version %.64q does not parse", version)
	case major < 2:
		return false, fmt.Sprintf("containerd %.64s serves its event stream to one subscriber: a second one would take events from kubelet", version)
	}
	return true, ""
}

// majorVersion is the major number of a version such as "v2.0.1",
// "2.1.0-rc.1" or "1.7.24": MAJOR.MINOR at least, each a decimal number.
func majorVersion(v string) (int, bool) {
	v = strings.TrimPrefix(v, "v")
	if i := strings.IndexAny(v, "-+"); i >= 0 {
		v = v[:i]
	}
	parts := strings.Split(v, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, false
	}
	// Signs were cut with the pre-release and build suffixes, so each
	// part that converts is a plain number.
	for _, p := range parts {
		if _, err := strconv.Atoi(p); err != nil {
			return 0, false
		}
	}
	major, _ := strconv.Atoi(parts[0])
	return major, true
}
