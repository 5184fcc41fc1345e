// Package endpoint names the daemon's socket: its default and the forms of
// --endpoint the daemon and the command-line client both accept. It is its
// own package so the client links nothing of the driver.
package endpoint

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// Default is the daemon's CSI socket when neither --endpoint nor
// $BPFMOUNT_ENDPOINT is given.
const Default = "unix:///run/bpfmount/csi.sock"

// EnvVar names the socket for the daemon and the client alike (the chart
// sets it in the driver's container, so `bpfmount list` there needs no
// flag).
const EnvVar = "BPFMOUNT_ENDPOINT"

// FromEnv is --endpoint's default: $BPFMOUNT_ENDPOINT, else Default.
func FromEnv() string {
	if v := os.Getenv(EnvVar); v != "" {
		return v
	}
	return Default
}

// Parse turns "unix:///path", "unix:/path" or "/path" into a socket path.
// Only unix sockets are served: the socket is the driver's only access
// control.
func Parse(ep string) (string, error) {
	if strings.HasPrefix(ep, "/") {
		return ep, nil
	}
	u, err := url.Parse(ep)
	if err != nil || u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: want unix:///path/to/csi.sock", ep)
	}
	p := u.Path
	if p == "" {
		p = u.Opaque
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: the socket path must be absolute", ep)
	}
	return p, nil
}
