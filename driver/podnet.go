package driver

import (
	"errors"

	"github.com/bpfmount/bpfmount/internal/defaultroute"
	"github.com/bpfmount/bpfmount/internal/fault"
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
