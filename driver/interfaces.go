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
	Hold(key, owner string) bool
	Program(key string) *loader.Program
	Replace(ctx context.Context, oldKey string, r *loader.Resolved, owner string) (*loader.Program, *loader.Replaced, error)
	RecoverReplace(from, to loader.Identity) (bool, error)
	Adopt(id loader.Identity, owner string) (*loader.Program, error)
	Prune(keep ...string) ([]string, error)
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
	PutLinger(l *state.Linger) error
	GetLinger(key string) (*state.Linger, error)
	DeleteLinger(key string) error
	Lingers() ([]*state.Linger, error)
	PutNodeProgram(p *state.NodeProgram) error
	DeleteNodeProgram(name string) error
	NodePrograms() ([]*state.NodeProgram, error)
	PutUpgrade(u *state.Upgrade) error
	DeleteUpgrade(key string) error
	Upgrades() ([]*state.Upgrade, error)
}

// mounter is what the driver uses of package mapfs.
type mounter interface {
	OpenTarget(path string, roots []string) (*mapfs.Target, error)
	Expose(staging string, t *mapfs.Target, maps map[string]*ebpf.Map, opts mapfs.Options) (mapfs.Made, error)
	Withdraw(staging, target string, made mapfs.Made) error
	Inspect(dir string) (mapfs.Mount, error)
}

// hostMounts is the real mounter: package mapfs on this host.
type hostMounts struct{}

func (hostMounts) OpenTarget(path string, roots []string) (*mapfs.Target, error) {
	return mapfs.OpenTarget(path, roots)
}

func (hostMounts) Expose(staging string, t *mapfs.Target, maps map[string]*ebpf.Map, opts mapfs.Options) (mapfs.Made, error) {
	return mapfs.Expose(staging, t, maps, opts)
}

func (hostMounts) Withdraw(staging, target string, made mapfs.Made) error {
	return mapfs.Withdraw(staging, target, made)
}

func (hostMounts) Inspect(dir string) (mapfs.Mount, error) { return mapfs.Inspect(dir) }

var (
	_ programLoader = (*loader.Loader)(nil)
	_ recordStore   = (*state.Store)(nil)
	_ mounter       = hostMounts{}
)
