// Package driver implements bpfmount's CSI Identity and Node services.
//
// NodePublishVolume turns a volume's attributes into a loader request,
// loads and attaches the program (or joins an identical attachment), and
// mounts the program's maps at the target path; NodeUnpublishVolume undoes
// it. Each published volume has a record in the state directory, so a
// restarted driver knows what it owns. There is no controller service:
// bpfmount volumes are CSI ephemeral inline volumes.
package driver

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/loader"
)

// Name is the CSI driver name.
const Name = "csi.bpfmount.io"

// Version is set at build time.
var Version = "dev"

// Options configure a Driver.
type Options struct {
	// NodeID is this node's name, returned by NodeGetInfo.
	NodeID string
	// StateDir holds volume records, intents and staging mounts.
	StateDir string
	// BPFFSRoot is the loader's pin directory (on a bpffs); targets may not
	// be inside it.
	BPFFSRoot string
	// Loader loads and attaches programs.
	Loader *loader.Loader
	// Policy decides who may load what; nil means policy.Default() (pods
	// denied, the local CLI allowed).
	Policy policy.Source
	// Events records load failures and denials on pods; nil records none.
	Events events.Recorder
	// TargetRoots are the directories publish targets must lie in (below
	// them, no symlink is followed); empty means DefaultTargetRoots.
	TargetRoots []string
}

// Driver serves the CSI Identity and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedNodeServer

	opts   Options
	store  *state.Store
	loader *loader.Loader
	locks  volumeLocks
	ready  atomic.Bool
}

// New opens the state directory. Call Restore before serving.
func New(opts Options) (*Driver, error) {
	if opts.NodeID == "" {
		return nil, errors.New("driver: node ID is empty")
	}
	if opts.Loader == nil {
		return nil, errors.New("driver: no loader")
	}
	for _, d := range []*string{&opts.StateDir, &opts.BPFFSRoot} {
		abs, err := filepath.Abs(*d)
		if err != nil {
			return nil, err
		}
		*d = abs
	}
	roots, err := targetRoots(opts.TargetRoots)
	if err != nil {
		return nil, err
	}
	opts.TargetRoots = roots
	if opts.Events == nil {
		opts.Events = events.Discard{}
	}
	if opts.Policy == nil {
		opts.Policy = policy.Static(policy.Default())
	}
	store, err := state.Open(opts.StateDir)
	if err != nil {
		return nil, err
	}
	d := &Driver{opts: opts, store: store, loader: opts.Loader}
	metrics.SetStateFunc(d.metricsState)
	return d, nil
}

// metricsState is what the node gauges report at scrape time.
func (d *Driver) metricsState() metrics.State {
	var s metrics.State
	recs, _ := d.store.List()
	s.Volumes = liveVolumes(recs)
	for _, p := range d.loader.Programs() {
		s.Attachments = append(s.Attachments, metrics.Attachment{
			Interface: p.Identity.Interface, Hook: string(p.Identity.Hook), Attached: p.Attached,
		})
	}
	for _, c := range d.loader.Chains() {
		hook := c.Hook
		if c.Direction != "" {
			hook += "/" + c.Direction
		}
		s.Dispatchers = append(s.Dispatchers, metrics.Dispatcher{Interface: c.Interface, Hook: hook, Revisions: c.Revisions})
	}
	return s
}

// Store returns the driver's record store.
func (d *Driver) Store() *state.Store { return d.store }

// volumeLocks lets one operation at a time work on a volume; a second
// concurrent call gets Aborted, as the CSI spec asks.
type volumeLocks struct {
	mu   sync.Mutex
	busy map[string]struct{}
}

func (l *volumeLocks) tryLock(id string) (unlock func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.busy == nil {
		l.busy = map[string]struct{}{}
	}
	if _, taken := l.busy[id]; taken {
		return nil, false
	}
	l.busy[id] = struct{}{}
	return func() {
		l.mu.Lock()
		delete(l.busy, id)
		l.mu.Unlock()
	}, true
}

var _ csi.IdentityServer = (*Driver)(nil)
var _ csi.NodeServer = (*Driver)(nil)

// GetPluginInfo returns the driver's name and version.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: Name, VendorVersion: Version}, nil
}

// GetPluginCapabilities advertises nothing: no controller service, no
// topology constraints.
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

// Probe reports ready once the driver has rebuilt its state.
func (d *Driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspbBool(d.ready.Load())}, nil
}

// DigestsInUse returns the image digests some volume uses, so the image
// cache never evicts them.
func (d *Driver) DigestsInUse() map[string]bool {
	out := map[string]bool{}
	recs, _ := d.store.List()
	for _, r := range recs {
		out[r.Identity.Digest] = true
	}
	return out
}
