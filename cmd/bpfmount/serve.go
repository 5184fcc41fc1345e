//go:build !bpfmount_cli

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/events"
	"github.com/bpfmount/bpfmount/driver/events/kube"
	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/registration"
	"github.com/bpfmount/bpfmount/internal/cri"
	"github.com/bpfmount/bpfmount/internal/endpoint"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// cancelWait is how long calls cancelled at shutdown get to return.
const cancelWait = 5 * time.Second

type serveOptions struct {
	endpoint   string
	nodeID     string
	stateDir   string
	bpffsRoot  string
	libxdpDir  string
	imageCache string
	mountBPFFS bool
	mountTrace bool
	policyPath string
	policyPoll time.Duration
	programs   string
	targetRoot []string

	cacheBytes    int64
	maxUnpacked   int64
	pullTimeout   time.Duration
	dockerConfig  string
	verifyKey     string
	requireSigned bool

	metricsAddr  string
	healthAddr   string
	programStats bool
	cgroupRoot   string
	kubeletCg    string
	criEndpoint  string
	criEvents    string
	sandboxWait  time.Duration
	gcInterval   time.Duration

	shutdownGrace time.Duration

	registrationSocket string
	kubeletPath        string
}

func newServeCmd() *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the CSI node plugin daemon",
		Long: `Run the CSI Identity and Node services on a unix socket.

On start the daemon re-adopts the programs its volume records describe
(their links are pinned, so they kept running), finishes or rolls back
operations a crash interrupted, and removes pins no volume owns; only then
does it serve. SIGTERM or SIGINT stops accepting calls and lets the calls in
flight finish for --shutdown-grace; then it cancels them, waits up to 5 s
for them to roll back, and exits. Attached programs stay attached.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context()) },
	}
	f := cmd.Flags()
	f.StringVar(&o.endpoint, "endpoint", endpoint.FromEnv(), "CSI socket, unix:///path ($"+endpoint.EnvVar+" when set)")
	f.StringVar(&o.nodeID, "node-id", "", "node name (default: $KUBE_NODE_NAME, then the host name)")
	f.StringVar(&o.stateDir, "state-dir", defaultStateDir, "directory for volume records and staging mounts (tmpfs on real nodes)")
	f.StringVar(&o.bpffsRoot, "bpffs-root", defaultBPFFSRoot, "directory on a bpffs for the driver's pins")
	f.StringVar(&o.libxdpDir, "libxdp-dir", "", "libxdp's pin directory (e.g. /sys/fs/bpf/xdp); when set, each interface's XDP chain is shared with libxdp: dispatchers are attached through netlink and swapped under libxdp's lock, pinned in libxdp's layout, and follow libxdp's own swaps, so that `xdp-loader load` joins bpfmount's chains, bpfmount joins libxdp's, and `xdp-loader status` lists both; unset, dispatchers are attached with a bpf_link that libxdp cannot join")
	f.StringVar(&o.imageCache, "image-cache", defaultImageCache, "directory of the bytecode image cache")
	f.StringVar(&o.policyPath, "policy", "", "node policy file (YAML; reloaded on change). Without one, pods may not load programs and the local CLI may")
	f.DurationVar(&o.policyPoll, "policy-reload-interval", 5*time.Second, "how often to check the policy file for changes")
	f.StringVar(&o.programs, "programs", "", "node programs file (YAML, kind NodePrograms): named programs the node keeps loaded whatever pods do, unloaded when removed from the file; checked for changes like the policy (see docs/lifetimes.md)")
	f.Int64Var(&o.cacheBytes, "image-cache-size", 1<<30, "bytes of image cache before unused images are evicted, least recently used first (0: no limit)")
	f.Int64Var(&o.maxUnpacked, "image-max-unpacked-size", bytecode.DefaultMaxUnpackedBytes, "bytes an image's layer may unpack to; a layer that inflates past it (a gzip bomb) is refused (at most 65 MiB)")
	f.DurationVar(&o.pullTimeout, "pull-timeout", 2*time.Minute, "how long one image pull may take")
	f.StringVar(&o.dockerConfig, "docker-config", "", "node-wide registry credentials (a docker config.json); a pod's nodePublishSecretRef takes precedence")
	f.StringVar(&o.verifyKey, "verify-key", "", "PEM public key(s) that image signatures (cosign format) are verified with, offline")
	f.BoolVar(&o.requireSigned, "require-signatures", false, "refuse every image without a signature that verifies with --verify-key: registry images must carry one, and local oci: layouts, which carry none, are refused")
	f.StringVar(&o.metricsAddr, "metrics-address", "", "serve Prometheus metrics at http://ADDR/metrics (empty: off)")
	f.BoolVar(&o.programStats, "program-stats", true, "keep the kernel's run-time statistics of eBPF programs enabled while serving (BPF_ENABLE_STATS), so metrics and `list -o wide` report each program's run count and time; costs every eBPF program on the node two clock reads per run")
	f.StringVar(&o.healthAddr, "health-address", "", "serve http://ADDR/healthz (empty: off)")
	f.StringVar(&o.cgroupRoot, "cgroup-root", "/sys/fs/cgroup", "where the node's cgroup hierarchy is mounted; cgroup programs attach in its cgroup2 part (DIR itself, or DIR/unified on a hybrid cgroup v1/v2 node)")
	f.StringVar(&o.kubeletCg, "kubelet-cgroup-root", "/", "kubelet's --cgroup-root, under which pods' cgroups are looked for")
	f.StringVar(&o.criEndpoint, "cri-endpoint", "unix:///run/containerd/containerd.sock", "the container runtime's CRI socket (CRI-O: unix:///var/run/crio/crio.sock), through which volumes with interface pod find the pod's sandbox and its network namespace (empty: such volumes fail)")
	f.StringVar(&o.criEvents, "cri-events", "auto", "whether to follow the runtime's CRI event stream, so that volumes with interface pod attach as soon as the pod's sandbox or container starts instead of at the next 2 s poll: auto follows it only on containerd 2.0 and later (containerd 1.7, like older CRI-O, shares one stream among all subscribers, so following it would take events from kubelet), on always, off never")
	f.DurationVar(&o.sandboxWait, "sandbox-wait", driver.DefaultSandboxWait, "how long a volume with interface pod waits for the pod's sandbox before its status and an event report a failure (it keeps waiting)")
	f.StringVar(&o.registrationSocket, "registration-socket", "", "serve kubelet's plugin registration API on this socket (in <kubeletRootDir>/plugins_registry/), so no registrar sidecar is needed")
	f.StringVar(&o.kubeletPath, "kubelet-registration-path", "", "the CSI socket's path as kubelet sees it (e.g. /var/lib/kubelet/plugins/csi.bpfmount.io/csi.sock); required with --registration-socket")
	f.DurationVar(&o.gcInterval, "gc-interval", 10*time.Minute, "how often to remove pins and staging mounts no volume owns (0: only at start)")
	f.StringSliceVar(&o.targetRoot, "target-root", driver.DefaultTargetRoots, "directories publish targets must lie in (repeat or comma-separate); no symlink below them is followed, anything else is refused. On Kubernetes: <kubelet root>/pods")
	f.BoolVar(&o.mountBPFFS, "mount-bpffs", true, "mount a bpffs at the parent of --bpffs-root when none is mounted there")
	f.BoolVar(&o.mountTrace, "mount-tracefs", true, "mount tracefs at /sys/kernel/tracing when a tracepoint needs it and none is mounted")
	f.DurationVar(&o.shutdownGrace, "shutdown-grace", 20*time.Second, "on SIGTERM or SIGINT, how long calls in flight may run before they are cancelled; keep it, plus 5 s, below the pod's terminationGracePeriodSeconds")
	addLogFlags(cmd)
	return cmd
}

// addLogFlags gives cmd klog's flags: -v (log verbosity) in its help, the
// rest accepted but hidden, as kubectl does, so they do not bury the
// daemon's own flags. Only serve logs, so only serve has them.
func addLogFlags(cmd *cobra.Command) {
	gf := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(gf)
	cmd.Flags().AddGoFlagSet(gf)
	gf.VisitAll(func(f *flag.Flag) {
		if f.Name != "v" {
			cmd.Flags().MarkHidden(f.Name)
		}
	})
}

func (o *serveOptions) run(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("serve needs root: it loads eBPF programs and mounts filesystems")
	}
	if o.nodeID == "" {
		o.nodeID = os.Getenv("KUBE_NODE_NAME")
	}
	if o.nodeID == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no --node-id and no host name: %w", err)
		}
		o.nodeID = h
	}
	if (o.registrationSocket == "") != (o.kubeletPath == "") {
		return errors.New("--registration-socket and --kubelet-registration-path go together")
	}
	criEvents, err := driver.ParseCRIEventsMode(o.criEvents)
	if err != nil {
		return fmt.Errorf("--cri-events %w", err)
	}
	if err := ensureBPFFS(o.bpffsRoot, o.mountBPFFS); err != nil {
		return err
	}
	// The cache asks which digests are in use from its own goroutine,
	// possibly before the driver exists.
	var current atomic.Pointer[driver.Driver]
	reg, err := newFetcher(o, func() map[string]bool {
		if d := current.Load(); d != nil {
			return d.DigestsInUse()
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer reg.Close()
	ld, err := loader.New(loader.Options{Root: o.bpffsRoot, Fetcher: reg, NodeName: o.nodeID, LibxdpDir: o.libxdpDir, MountTracefs: o.mountTrace, CgroupRoot: o.cgroupRoot})
	if err != nil {
		return err
	}
	defer ld.Close()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if o.programs != "" && o.policyPoll <= 0 {
		return fmt.Errorf("--policy-reload-interval must be positive with --programs, got %v: it is how often the programs file is checked", o.policyPoll)
	}
	var pol policy.Source
	if o.policyPath != "" {
		w, err := policy.NewWatcher(o.policyPath, o.policyPoll)
		if err != nil {
			return fmt.Errorf("loading policy: %w", err)
		}
		go w.Run(ctx)
		pol = w
	}
	rec, err := o.eventRecorder(ctx)
	if err != nil {
		return err
	}
	runStats := o.enableRunStats()
	if runStats != nil {
		defer runStats.Close()
	}
	var runtime driver.SandboxFinder
	if o.criEndpoint != "" {
		c, err := cri.Dial(o.criEndpoint)
		if err != nil {
			return fmt.Errorf("--cri-endpoint: %w", err)
		}
		defer c.Close()
		runtime = c
	}
	d, err := driver.New(driver.Options{NodeID: o.nodeID, StateDir: o.stateDir, BPFFSRoot: o.bpffsRoot, Loader: ld, Policy: pol, Events: rec, TargetRoots: o.targetRoot,
		RunStats: runStats != nil, CgroupRoot: o.cgroupRoot, KubeletCgroupRoot: o.kubeletCg, CRI: runtime, SandboxWait: o.sandboxWait, CRIEvents: criEvents})
	if err != nil {
		return err
	}
	defer d.StopWaiters()
	current.Store(d)
	if _, err := d.Restore(ctx); err != nil {
		return fmt.Errorf("restoring state: %w", err)
	}
	l, err := driver.Listen(o.endpoint)
	if err != nil {
		return err
	}
	if err := o.serveHTTP(ctx, d); err != nil {
		return err
	}
	go d.Maintain(ctx, o.gcInterval)
	if o.programs != "" {
		go d.WatchPrograms(ctx, o.programs, o.policyPoll)
	}
	regDone := make(chan struct{})
	if o.registrationSocket != "" {
		// Only now: kubelet calls NodeGetInfo as soon as this socket appears.
		go func() {
			defer close(regDone)
			err := registration.Serve(ctx, registration.Options{DriverName: driver.Name, Endpoint: o.kubeletPath, SocketPath: o.registrationSocket})
			if err != nil {
				klog.ErrorS(err, "Kubelet plugin registration stopped; /healthz now fails so the driver restarts")
			}
		}()
	} else {
		close(regDone)
	}
	// On the way out, let the registration remove its socket, or kubelet
	// keeps the driver registered after it is gone (helm uninstall).
	defer func() {
		stop() // also when serving failed rather than a signal arrived
		select {
		case <-regDone:
		case <-time.After(5 * time.Second):
			klog.InfoS("Kubelet registration did not stop within 5 s")
		}
	}()
	klog.InfoS("Serving", "driver", driver.Name, "version", driver.Version, "node", o.nodeID, "endpoint", o.endpoint,
		"stateDir", o.stateDir, "bpffsRoot", o.bpffsRoot, "chaining", ld.CanChain())
	srv := driver.NewServer(d, serverOptions()...)
	driver.RegisterAdmin(srv, d)
	return serveUntil(ctx, srv, l, o.shutdownGrace, cancelWait)
}

// enableRunStats turns the kernel's run-time statistics of eBPF programs on
// for as long as the returned descriptor stays open (the kernel keeps them
// on while any holder has one). It returns nil when --program-stats is off
// or the kernel refuses; then no run statistics are reported at all.
func (o *serveOptions) enableRunStats() io.Closer {
	if !o.programStats {
		return nil
	}
	c, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		klog.InfoS("The kernel refused to enable eBPF run-time statistics (BPF_ENABLE_STATS needs Linux 5.8 and CAP_SYS_ADMIN): programs' run counts and times are not reported; map memory still is", "err", err)
		return nil
	}
	return c
}

// ensureBPFFS makes sure root is a directory on a bpffs. Nodes usually have
// /sys/fs/bpf mounted; where not, the daemon mounts one at root's parent.
func ensureBPFFS(root string, mount bool) error {
	if onBPFFS(root) {
		return nil
	}
	parent := filepath.Dir(root)
	if !onBPFFS(parent) {
		if !mount {
			return fmt.Errorf("%s is not on a bpf filesystem: mount one (mount -t bpf bpf %s) or drop --mount-bpffs=false", root, parent)
		}
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", parent, err)
		}
		if err := unix.Mount("bpf", parent, "bpf", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
			return fmt.Errorf("mounting a bpf filesystem at %s: %w", parent, err)
		}
		klog.InfoS("Mounted a bpf filesystem", "path", parent)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", root, err)
	}
	return nil
}

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// serveHTTP starts the metrics and health endpoints, each on its own
// address so the health port can stay node-local while metrics are scraped.
func (o *serveOptions) serveHTTP(ctx context.Context, d *driver.Driver) error {
	routes := map[string]map[string]http.Handler{}
	if o.metricsAddr != "" {
		routes[o.metricsAddr] = map[string]http.Handler{"/metrics": metrics.Handler()}
	}
	if o.healthAddr != "" {
		if routes[o.healthAddr] == nil {
			routes[o.healthAddr] = map[string]http.Handler{}
		}
		routes[o.healthAddr]["/healthz"] = healthHandler(d, o.registrationSocket != "")
	}
	for addr, handlers := range routes {
		mux := http.NewServeMux()
		for path, h := range handlers {
			mux.Handle(path, h)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(l)
		go func() {
			<-ctx.Done()
			srv.Close()
		}()
	}
	return nil
}

// eventRecorder records pod events through the API server when the daemon
// runs in a pod; otherwise load failures are only logged.
func (o *serveOptions) eventRecorder(ctx context.Context) (events.Recorder, error) {
	rec, ok, err := kube.InCluster(o.nodeID)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if !ok {
		klog.InfoS("Not running in a pod: load failures are logged, not recorded as pod events")
		return events.Discard{}, nil
	}
	go rec.Run(ctx)
	return rec, nil
}
