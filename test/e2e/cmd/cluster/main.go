// Command cluster brings up the single-node Kubernetes the e2e test uses,
// with the chart installed from the images `make image` built, and leaves
// it running (`make cluster`); `down` brings down a cluster `up` made, and
// only such a cluster (`make cluster-down`). Needs root.
//
//	cluster up [-work DIR] [-repo DIR] [-images DIR] [-version V]
//	cluster down [-work DIR]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	kcluster "github.com/bpfmount/bpfmount/test/e2e/cluster"
)

const usage = `usage: cluster up [-work DIR] [-repo DIR] [-images DIR] [-version V]
       cluster down [-work DIR]

up brings up a single-node Kubernetes (the e2e test's), installs the chart
with the images from ` + "`make image`" + `, lays out the example bytecode and
leaves it running; down removes everything up made, and refuses a cluster
up did not make.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	logf := func(f string, a ...any) { fmt.Printf("cluster: "+f+"\n", a...) }
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:], logf)
	case "down":
		err = down(os.Args[2:], logf)
	default:
		fmt.Fprintf(os.Stderr, "cluster: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
		os.Exit(1)
	}
}

func workDir() string {
	if d := os.Getenv("BPFMOUNT_E2E_DIR"); d != "" {
		return d
	}
	return kcluster.DefaultWorkDir
}

func up(args []string, logf func(string, ...any)) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	work := fs.String("work", workDir(), "the cluster's work directory (state, logs, kubeconfig)")
	repo := fs.String("repo", "../..", "the repository's root")
	images := fs.String("images", "", "where `make image` wrote the OCI archives (default REPO/build/images)")
	version := fs.String("version", "dev", "the version `make image` built")
	fs.Parse(args)
	root, err := filepath.Abs(*repo)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(root, "charts", "bpfmount", "Chart.yaml")); err != nil {
		return fmt.Errorf("%s is not the bpfmount repository (no charts/bpfmount): pass -repo", root)
	}
	if *images == "" {
		*images = filepath.Join(root, "build", "images")
	}
	bin := filepath.Join(root, "test", "e2e", ".cache", "bin")
	if why := kcluster.Missing(bin); why != "" {
		return errors.New(why)
	}
	imgs := kcluster.ReleaseImages(*images, *version)
	if err := kcluster.CheckReleaseImages(imgs); err != nil {
		return err
	}
	c := kcluster.New(kcluster.Options{Work: *work, Bin: bin, Detach: true, Logf: logf})
	if err := c.BuildHostTools(root); err != nil {
		return err
	}
	// Interrupted, up undoes what it did, as a failed step does.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bringUp(ctx, c, root, imgs); err != nil {
		logf("bring-up failed: %v; removing what was made", err)
		for _, derr := range c.Down() {
			fmt.Fprintf(os.Stderr, "cluster: teardown: %v\n", derr)
		}
		return err
	}
	ex, err := writeExamples(root, *work)
	if err == nil {
		err = c.Save()
	}
	if err != nil {
		logf("%v; removing what was made", err)
		for _, derr := range c.Down() {
			fmt.Fprintf(os.Stderr, "cluster: teardown: %v\n", derr)
		}
		return err
	}
	fmt.Printf(`
The cluster is up and runs until `+"`make cluster-down`"+`. Try it with:

  export KUBECONFIG=%[1]s
  kubectl -n %[2]s get pods                       # the driver
  kubectl apply -f deploy/examples/namespace.yaml -f %[3]s
  kubectl -n bpfmount-examples get pod xdp-counter -w
  tail -f %[4]s/pod-logs/bpfmount-examples_xdp-counter_*/reader/*.log

The example counts the node's loopback traffic (the apiserver's among it).
kubelet listens on 127.0.0.1 only, so kubectl logs/exec do not reach it:
the pod logs are files under %[4]s/pod-logs. Component logs: %[4]s/logs.
`, c.Kubeconfig, kcluster.ReleaseNS, ex, c.Work)
	return nil
}

func bringUp(ctx context.Context, c *kcluster.Cluster, root string, imgs []kcluster.ReleaseImage) error {
	start := time.Now()
	if err := c.Up(ctx); err != nil {
		return err
	}
	if err := c.LoadImages(imgs); err != nil {
		return err
	}
	if err := c.BytecodeLayouts(root); err != nil {
		return err
	}
	logf := func(f string, a ...any) { fmt.Printf("cluster: "+f+"\n", a...) }
	logf("installing the chart")
	if err := c.HelmInstall(ctx, filepath.Join(root, "charts", "bpfmount"), c.Values("v1", kcluster.FreePort())); err != nil {
		return fmt.Errorf("helm install: %w", err)
	}
	if err := c.WaitDaemonSet(ctx); err != nil {
		return err
	}
	logf("driver running after %v", time.Since(start).Round(time.Millisecond))
	return nil
}

func down(args []string, logf func(string, ...any)) error {
	fs := flag.NewFlagSet("down", flag.ExitOnError)
	work := fs.String("work", workDir(), "the cluster's work directory")
	fs.Parse(args)
	if os.Geteuid() != 0 {
		return errors.New("bringing the cluster down needs root (it stops kubelet and containerd, unmounts, restores sysctls)")
	}
	c, err := kcluster.Load(*work, logf)
	if err != nil {
		return err
	}
	start := time.Now()
	errs := c.Down()
	for _, e := range errs {
		fmt.Fprintf(os.Stderr, "cluster: teardown: %v\n", e)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d things could not be undone (above)", len(errs))
	}
	logf("down after %v; processes stopped, mounts, network and sysctls restored", time.Since(start).Round(time.Millisecond))
	return nil
}
