package driver

import (
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/fault"
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
	// RunStats says the process holds the kernel's run-time statistics
	// enabled (BPF_ENABLE_STATS): programs' run counts and times are then
	// reported. Without it none are, not even zeros.
	RunStats bool
	// CgroupRoot is where the cgroup hierarchy is mounted (empty:
	// /sys/fs/cgroup); on a hybrid node its cgroup2 part is CgroupRoot/unified.
	CgroupRoot string
	// KubeletCgroupRoot is kubelet's --cgroup-root (empty: "/"), under
	// which pods' cgroups are looked for.
	KubeletCgroupRoot string
	// CRI finds pods' sandboxes for interface pod (deferred.go), and, if
	// it is a PodWatcher too, follows the runtime's events; nil: such
	// volumes fail with FailedPrecondition.
	CRI SandboxFinder
	// SandboxPoll is how often a deferred volume asks the runtime for its
	// pod's sandbox when the runtime's events do not flow (0:
	// DefaultSandboxPoll); SandboxResync how often it asks while they do,
	// as a safety net (0: DefaultSandboxResync); SandboxWait how long it
	// waits for one before it reports a failure (0: DefaultSandboxWait).
	SandboxPoll, SandboxResync, SandboxWait time.Duration
	// CRIEvents says whether the daemon subscribes to the runtime's event
	// stream (deferred_events.go); the zero value is CRIEventsAuto.
	CRIEvents CRIEventsMode
}

// Driver serves the CSI Identity and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedNodeServer

	opts   Options
	store  *countingStore
	loader programLoader
	mounts mounter
	locks  volumeLocks
	ready  atomic.Bool
	// defaultRoute names the interface of the default route (node:default).
	defaultRoute func() (string, error)
	// waiters attach deferred volumes (deferred.go).
	waiters waiters

	lingerMu   sync.Mutex    // linger records and the driver's holds (lifetime.go)
	lingerWake chan struct{} // a new deadline was recorded
	names      namedMutex    // a name is checked and taken under its lock
	programs   nodePrograms  // node programs (programs.go)
}

// New opens the state directory. Call Restore before serving.
func New(opts Options) (*Driver, error) {
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
	store, err := state.Open(opts.StateDir)
	if err != nil {
		return nil, err
	}
	d, err := newDriver(opts, opts.Loader, store, hostMounts{})
	if err != nil {
		return nil, err
	}
	metrics.SetStateFunc(d.metricsState)
	metrics.SetProgramsFunc(d.metricsPrograms)
	return d, nil
}

// newDriver builds a driver on the given dependencies; tests pass fakes.
func newDriver(opts Options, ld programLoader, st recordStore, mnt mounter) (*Driver, error) {
	if opts.NodeID == "" {
		return nil, errors.New("driver: node ID is empty")
	}
	if opts.Events == nil {
		opts.Events = events.Discard{}
	}
	if opts.Policy == nil {
		opts.Policy = policy.Static(policy.Default())
	}
	return &Driver{opts: opts, store: newCountingStore(st), loader: ld, mounts: mnt, lingerWake: make(chan struct{}, 1),
		defaultRoute: defaultRouteInterface}, nil
}

// metricsState is what the node gauges report at scrape time. Everything
// in it is kept in memory: a scrape reads no file.
func (d *Driver) metricsState() metrics.State {
	s := metrics.State{Volumes: d.store.count()}
	for _, p := range d.loader.Programs() {
		s.Attachments = append(s.Attachments, metrics.Attachment{
			Interface: metricInterface(p.Identity), Hook: string(p.Identity.Hook), Attached: p.Attached,
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

// DigestsInUse returns the image digests some volume uses, so the image
// cache never evicts them. It reads no file.
func (d *Driver) DigestsInUse() map[string]bool {
	return d.store.digestsInUse()
}

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

// lockVolume takes the volume's lock or fails with Aborted.
func (d *Driver) lockVolume(volID string) (unlock func(), err error) {
	unlock, ok := d.locks.tryLock(volID)
	if !ok {
		return nil, fault.Errorf(fault.Aborted, "an operation on volume %q is already in progress; retry later", volID)
	}
	return unlock, nil
}
