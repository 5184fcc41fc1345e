package driver

import (
	"context"

	"github.com/cilium/ebpf"

	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/mapfs"
	"github.com/bpfmount/bpfmount/loader"
)

// The driver's dependencies, as small as what it uses of them, so that its
// logic can be tested with fakes and without root. Options still take the
// real *loader.Loader; the state store and mapfs are built in New.

// programLoader is what the driver uses of *loader.Loader.
type programLoader interface {
	Resolve(ctx context.Context, req loader.Request) (*loader.Resolved, error)
	Acquire(ctx context.Context, r *loader.Resolved, owner string) (*loader.Program, error)
	Release(key, owner string) error
	Adopt(id loader.Identity, owner string) (*loader.Program, error)
	Prune() ([]string, error)
	Programs() []*loader.Program
	Chains() []loader.ChainStat
	WatchInterfaces(ctx context.Context, lost func(*loader.Program)) error
}

// recordStore is what the driver uses of *state.Store.
type recordStore interface {
	Get(volumeID string) (*state.Record, error)
	Put(r *state.Record) error
	Delete(volumeID string) error
	List() ([]*state.Record, error)
	PutIntent(in *state.Intent) error
	DeleteIntent(volumeID string) error
	Intents() ([]*state.Intent, error)
	StagingPath(volumeID string) string
	MountsDir() string
}

// mounter is what the driver uses of package mapfs.
type mounter interface {
	Expose(staging, target string, maps map[string]*ebpf.Map, opts mapfs.Options) error
	Withdraw(staging, target string) error
	Inspect(dir string) (mapfs.Mount, error)
}

// hostMounts is the real mounter: package mapfs on this host.
type hostMounts struct{}

func (hostMounts) Expose(staging, target string, maps map[string]*ebpf.Map, opts mapfs.Options) error {
	return mapfs.Expose(staging, target, maps, opts)
}

func (hostMounts) Withdraw(staging, target string) error { return mapfs.Withdraw(staging, target) }

func (hostMounts) Inspect(dir string) (mapfs.Mount, error) { return mapfs.Inspect(dir) }

var (
	_ programLoader = (*loader.Loader)(nil)
	_ recordStore   = (*state.Store)(nil)
	_ mounter       = hostMounts{}
)
