package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The state file is what `make cluster` leaves for `make cluster-down`:
// the processes it started (pid and start time) and what it changed on the
// host, so that Down undoes exactly that. Its presence is also the mark of
// a cluster `make cluster` made: without it, cluster-down touches nothing.
const (
	stateFile    = "cluster-state.json"
	stateVersion = 1
	bootIDPath   = "/proc/sys/kernel/random/boot_id"
)

// ErrNoState is returned by Load when the work directory holds no state.
var ErrNoState = errors.New("no cluster state")

// StatePath is the state file of the cluster whose work directory is work.
func StatePath(work string) string { return filepath.Join(work, stateFile) }

type state struct {
	Version    int               `json:"version"`
	BootID     string            `json:"bootID"`
	Work       string            `json:"work"`
	Run        string            `json:"run"`
	Bin        string            `json:"bin"`
	KubeletDir string            `json:"kubeletDir"`
	Kubeconfig string            `json:"kubeconfig"`
	Containerd string            `json:"containerd"`
	APIPort    int               `json:"apiPort"`
	Procs      []procState       `json:"procs"`
	Existed    map[string]bool   `json:"existed"`
	Sysctls    map[string]string `json:"sysctls"`
	MountedBPF bool              `json:"mountedBPF"`
	Iptables   string            `json:"iptables"`
}

type procState struct {
	Name  string `json:"name"`
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// Save writes the cluster's state to its work directory (atomically: a
// reader sees the old state or the new one).
func (c *Cluster) Save() error {
	st := state{
		Version: stateVersion, BootID: c.bootID,
		Work: c.Work, Run: c.Run, Bin: c.Bin, KubeletDir: c.KubeletDir, Kubeconfig: c.Kubeconfig,
		Containerd: c.Containerd, APIPort: c.APIPort,
		Existed: c.existed, Sysctls: c.sysctlSaved, MountedBPF: c.mountedBPF, Iptables: c.iptables,
	}
	for _, p := range c.procs {
		st.Procs = append(st.Procs, procState{Name: p.name, Pid: p.pid, Start: p.start})
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := StatePath(c.Work) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("saving the cluster state: %w", err)
	}
	if err := os.Rename(tmp, StatePath(c.Work)); err != nil {
		return fmt.Errorf("saving the cluster state: %w", err)
	}
	return nil
}

func (c *Cluster) saveIfDetached() error {
	if !c.detach {
		return nil
	}
	return c.Save()
}

// Load reads the state Save left in work and checks it still describes
// what runs: each recorded process still runs with its recorded start time,
// or is gone. A pid that now names another process (same pid, other start
// time) means the state is not this machine's present, and Load refuses:
// nothing may be stopped or removed on its word. After a reboot (another
// boot ID) every recorded process is gone.
func Load(work string, logf func(string, ...any)) (*Cluster, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	path := StatePath(work)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: this is not a cluster `make cluster` made (or it is down already), so nothing was touched; a cluster the e2e test made goes down with the test", ErrNoState, path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the cluster state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s is not a cluster state (%v): nothing was touched", path, err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("%s has state version %d, this program reads %d: nothing was touched", path, st.Version, stateVersion)
	}
	if filepath.Clean(st.Work) != filepath.Clean(work) {
		return nil, fmt.Errorf("%s describes the cluster in %s, not %s: nothing was touched", path, st.Work, work)
	}
	c := &Cluster{
		Work: st.Work, Run: st.Run, Bin: st.Bin, KubeletDir: st.KubeletDir, Kubeconfig: st.Kubeconfig,
		Containerd: st.Containerd, APIPort: st.APIPort, detach: true, log: logf,
		existed: st.Existed, sysctlSaved: st.Sysctls, mountedBPF: st.MountedBPF, iptables: st.Iptables,
		bootID: st.BootID, touched: true, hostPaths: hostPaths,
	}
	if c.existed == nil {
		c.existed = map[string]bool{}
	}
	if c.sysctlSaved == nil {
		c.sysctlSaved = map[string]string{}
	}
	sameBoot := true
	if b, err := os.ReadFile(bootIDPath); err == nil && st.BootID != "" {
		sameBoot = strings.TrimSpace(string(b)) == st.BootID
	}
	var live []string
	for _, ps := range st.Procs {
		if !sameBoot {
			logf("%s (pid %d) ran before the last reboot: gone", ps.Name, ps.Pid)
			continue
		}
		now, err := startTime(ps.Pid)
		if err != nil {
			logf("%s (pid %d) is gone", ps.Name, ps.Pid)
			continue
		}
		if now != ps.Start {
			return nil, fmt.Errorf("pid %d, recorded in %s as %s started at tick %d, is now another process (started at tick %d): the state does not describe what runs here, so nothing was touched; stop what is left of that cluster by hand", ps.Pid, path, ps.Name, ps.Start, now)
		}
		live = append(live, ps.Name)
	}
	for _, ps := range st.Procs {
		// Every recorded process is kept: stop and exited check the start
		// time again before touching one.
		c.procs = append(c.procs, &proc{name: ps.Name, pid: ps.Pid, start: ps.Start})
	}
	if len(live) > 0 && c.running("kube-apiserver") {
		if cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err == nil {
			if cs, err := kubernetes.NewForConfig(cfg); err == nil {
				c.Cfg, c.CS = cfg, cs
			}
		}
	}
	return c, nil
}
