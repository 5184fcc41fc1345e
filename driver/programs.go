package driver

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/fault"
)

// Node programs are named programs the node keeps loaded because the
// programs file (--programs) lists them, whatever pods do: a node
// firewall, a node-wide counter. Pods reach their maps with from: NAME.
// Each has a record in the state directory, so a restart re-adopts them
// without a gap; a program removed from the file is unloaded.

// nodeOwner is the loader owner of a node program. A volume ID never holds
// ':', so it cannot collide with a volume's.
func nodeOwner(name string) string { return "node:" + name }

// programsFile is the parsed programs file.
type programsFile struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Programs   []programsEntry `json:"programs"`
}

// programsEntry is one node program: its name and its volume attributes
// (those of a load volume, without name, from or keepAttached).
type programsEntry struct {
	Name       string            `json:"name"`
	Attributes map[string]string `json:"attributes"`
}

const programsKind = "NodePrograms"

// parsePrograms parses and checks a programs file: every entry must be a
// load request a volume could make, under a unique name.
func parsePrograms(data []byte) (map[string]*volumeRequest, error) {
	var f programsFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("programs file is not valid: %w", err)
	}
	if f.APIVersion != "bpfmount.io/v1alpha1" || f.Kind != programsKind {
		return nil, fmt.Errorf("programs file has apiVersion %q and kind %q: want apiVersion: bpfmount.io/v1alpha1 and kind: %s", f.APIVersion, f.Kind, programsKind)
	}
	out := make(map[string]*volumeRequest, len(f.Programs))
	for i, p := range f.Programs {
		where := fmt.Sprintf("programs[%d]", i)
		if !validName(p.Name) {
			return nil, fmt.Errorf("%s: name %q is not a DNS label (1 to 63 lowercase letters, digits and '-')", where, p.Name)
		}
		if out[p.Name] != nil {
			return nil, fmt.Errorf("%s: name %q is listed twice", where, p.Name)
		}
		for _, k := range []string{AttrName, AttrFrom, AttrKeepAttached} {
			if _, ok := p.Attributes[k]; ok {
				return nil, fmt.Errorf("%s (%q): attribute %q does not apply to a node program (its name is the entry's; it lives as long as the entry)", where, p.Name, k)
			}
		}
		attrs := maps.Clone(p.Attributes)
		if attrs == nil {
			attrs = map[string]string{}
		}
		attrs[AttrName] = p.Name
		vr, err := parseAttributes(attrs)
		if err != nil {
			return nil, fmt.Errorf("%s (%q): %w", where, p.Name, err)
		}
		if vr.fromPod {
			return nil, fmt.Errorf("%s (%q): kubelet keys (%s*) do not belong in a node program", where, p.Name, kubeletPrefix)
		}
		out[p.Name] = vr
	}
	return out, nil
}

// nodePrograms serializes reconciliations.
type nodePrograms struct {
	mu sync.Mutex
}

// syncPrograms makes the loaded node programs those of want: it unloads
// the ones no longer listed or listed with other attributes, and loads the
// missing ones. One program that fails is logged and the others go on; the
// errors are returned joined.
func (d *Driver) syncPrograms(ctx context.Context, want map[string]*volumeRequest) error {
	d.programs.mu.Lock()
	defer d.programs.mu.Unlock()
	have, err := d.store.NodePrograms()
	if err != nil {
		// An unreadable record might be a program still listed: touch
		// none of the recorded ones, load only what is new.
		klog.ErrorS(err, "Some node program records cannot be read; they are kept as found")
	}
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	byName := map[string]*state.NodeProgram{}
	for _, p := range have {
		byName[p.Name] = p
		if vr, ok := want[p.Name]; ok && maps.Equal(vr.attrs, p.Attributes) {
			continue
		}
		if err := d.unloadNodeProgram(p); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(byName, p.Name)
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if byName[name] != nil {
			continue
		}
		if err := d.loadNodeProgram(ctx, name, want[name]); err != nil {
			klog.ErrorS(errors.New(clip(err.Error(), maxLogError)), "Cannot load a node program; retried when the programs file changes or the driver restarts", "name", name)
			errs = append(errs, fmt.Errorf("node program %q: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (d *Driver) loadNodeProgram(ctx context.Context, name string, vr *volumeRequest) error {
	// Where it attaches is found at each load, as for a volume: the
	// default route's interface (node:default), a checked cgroup2
	// directory. On a copy: want is parsed once per file.
	v := *vr
	if err := d.resolveNodeInterface(&v); err != nil {
		return err
	}
	if err := d.resolveCgroup(&v); err != nil {
		return err
	}
	res, err := d.loader.Resolve(ctx, v.load)
	if err != nil {
		return err
	}
	unlock, _, err := d.claimName(name, res, false)
	if err != nil {
		return err
	}
	defer unlock()
	d.expireLingers(time.Now())
	prog, err := d.loader.Acquire(ctx, res, nodeOwner(name))
	if err != nil {
		return err
	}
	rec := &state.NodeProgram{Name: name, Attributes: vr.attrs, Key: prog.Key, Identity: res.Identity, ProgramID: uint32(prog.ID)}
	if err := d.store.PutNodeProgram(rec); err != nil {
		return errors.Join(fmt.Errorf("writing the record of node program %q: %w", name, err), d.loader.Release(prog.Key, nodeOwner(name)))
	}
	klog.InfoS("Loaded node program", "name", name, "hook", res.Identity.Hook, "target", clip(targetOf(res.Identity), maxLogValue), "id", prog.ID)
	return nil
}

func (d *Driver) unloadNodeProgram(p *state.NodeProgram) error {
	if err := d.loader.Release(p.Key, nodeOwner(p.Name)); err != nil {
		return fmt.Errorf("unloading node program %q: %w", p.Name, err)
	}
	if err := d.store.DeleteNodeProgram(p.Name); err != nil {
		return fmt.Errorf("deleting the record of node program %q: %w", p.Name, err)
	}
	klog.InfoS("Unloaded node program", "name", p.Name, "id", p.ProgramID)
	return nil
}

// restoreNodePrograms re-adopts the node programs loaded before a restart.
// A program whose pins are gone loses its record: the next sync loads it.
func (d *Driver) restoreNodePrograms(rep *RestoreReport) {
	ps, err := d.store.NodePrograms()
	if err != nil {
		rep.Unreadable += countErrors(err)
		klog.ErrorS(err, "Some node program records could not be read; they and their pins are kept as found")
	}
	for _, p := range ps {
		_, err := d.loader.Adopt(p.Identity, nodeOwner(p.Name))
		switch {
		case err == nil:
			rep.NodePrograms = append(rep.NodePrograms, p.Name)
		case fault.Of(err) == fault.NotFound:
			klog.InfoS("Node program vanished; it is loaded again from the programs file", "name", p.Name)
			if err := d.store.DeleteNodeProgram(p.Name); err != nil {
				klog.ErrorS(err, "Deleting a node program record", "name", p.Name)
			}
		default:
			klog.ErrorS(errors.New(clip(err.Error(), maxLogError)), "Cannot re-adopt a node program; its pins are kept", "name", p.Name)
		}
	}
}

// nodeProgramKeys are the keys whose pins garbage collection keeps for the
// node programs.
func (d *Driver) nodeProgramKeys() ([]string, error) {
	ps, err := d.store.NodePrograms()
	keys := make([]string, 0, len(ps))
	for _, p := range ps {
		keys = append(keys, p.Key)
	}
	return keys, err
}

// WatchPrograms syncs the node programs with the file at path now and
// whenever its content changes (checked every interval), until ctx is
// done. A file that cannot be read or parsed leaves the programs as they
// are; a sync that failed for some program is retried at the next change
// or every retry interval.
func (d *Driver) WatchPrograms(ctx context.Context, path string, interval time.Duration) {
	if interval <= 0 {
		klog.ErrorS(nil, "Programs file watch interval must be positive; node programs are not loaded", "interval", interval)
		return
	}
	var last [sha256.Size]byte
	var lastErr string
	synced := false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		data, err := os.ReadFile(path)
		switch {
		case err != nil:
			if err.Error() != lastErr {
				klog.ErrorS(err, "Cannot read the programs file; node programs stay as they are", "path", path)
			}
			lastErr = err.Error()
		case sha256.Sum256(data) != last || !synced:
			last, lastErr = sha256.Sum256(data), ""
			want, err := parsePrograms(data)
			if err != nil {
				klog.ErrorS(err, "Programs file is invalid; node programs stay as they are", "path", path)
				synced = true // until the file changes
				break
			}
			synced = d.syncPrograms(ctx, want) == nil
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
