package driver

import (
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/loader"
)

// usageReader is the loader's account of what its programs cost. It is
// optional: a loader without it (the tests' fakes) reports no costs.
type usageReader interface {
	Usage() []loader.Usage
}

// usage asks the loader for every program's cost, read from the kernel.
func (d *Driver) usage() []loader.Usage {
	ur, ok := d.loader.(usageReader)
	if !ok {
		return nil
	}
	return ur.Usage()
}

// runStats returns u's run statistics when the driver reports them: only
// while the process holds them enabled (otherwise the kernel's counts
// stand still at zero and would read as an idle program).
func (d *Driver) runStats(u loader.Usage) *loader.RunStats {
	if !d.opts.RunStats {
		return nil
	}
	return u.Run
}

// metricsPrograms is what the per-program series report at scrape time:
// the kernel's info on each loaded program, and the namespaces of the pods
// using it, from memory (a scrape reads no record).
func (d *Driver) metricsPrograms() []metrics.Program {
	pol := d.opts.Policy.Current()
	var out []metrics.Program
	for _, u := range d.usage() {
		var ns []string
		for _, owner := range u.Owners {
			if n, ok := d.store.namespace(owner); ok {
				// Only namespaces the policy names become label values.
				ns = append(ns, pol.NamespaceLabel(n))
			}
		}
		if len(ns) == 0 {
			// Being published or unpublished right now: no volume
			// records it, so there is no one to attribute it to yet.
			continue
		}
		hook := string(u.Identity.Hook)
		if u.Identity.Direction != "" {
			hook += "/" + u.Identity.Direction
		}
		p := metrics.Program{
			ID: uint32(u.ID), Name: u.Identity.Program, Hook: hook,
			Interface: metricInterface(u.Identity), Namespaces: ns,
		}
		if r := d.runStats(u); r != nil {
			p.Run = &metrics.Run{Count: r.Count, Seconds: r.Time.Seconds()}
		}
		for _, m := range u.Maps {
			p.Maps = append(p.Maps, metrics.Map{Name: m.Name, Bytes: m.Bytes, Estimated: m.Estimated})
		}
		out = append(out, p)
	}
	return out
}
