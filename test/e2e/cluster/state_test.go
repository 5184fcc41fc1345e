package cluster

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These tests need no root: they write state files in a temporary
// directory and start only `sleep` children.

func sleeper(t *testing.T) (*exec.Cmd, uint64) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	st, err := startTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return cmd, st
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	// A zombie (state Z) has exited; it waits for our Wait.
	return err == nil && !strings.Contains(string(b), ") Z ")
}

func testCluster(work string) *Cluster {
	c := New(Options{Work: work, Bin: "/nonexistent/bin", Detach: true})
	c.APIPort = 6443
	c.existed = map[string]bool{"/var/lib/kubelet": true, "/run/netns": false}
	c.sysctlSaved = map[string]string{"vm/overcommit_memory": "0", "kernel/panic": "10"}
	c.mountedBPF = true
	c.iptables = "*filter\n:INPUT ACCEPT\nCOMMIT\n"
	c.bootID = "boot-a"
	return c
}

func TestLoadWithoutStateRefuses(t *testing.T) {
	work := t.TempDir()
	c, err := Load(work, nil)
	if !errors.Is(err, ErrNoState) {
		t.Fatalf("Load without a state file = %v, %v; want ErrNoState", c, err)
	}
	for _, want := range []string{StatePath(work), "make cluster", "nothing was touched"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestLoadRefusesGarbageAndForeignState(t *testing.T) {
	work := t.TempDir()
	if err := os.WriteFile(StatePath(work), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(work, nil); err == nil || !strings.Contains(err.Error(), "not a cluster state") {
		t.Fatalf("Load of a damaged state = %v, want a refusal", err)
	}
	// A state file moved from another work directory describes that one.
	other := t.TempDir()
	if err := testCluster(other).Save(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(StatePath(other))
	if err := os.WriteFile(StatePath(work), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(work, nil); err == nil || !strings.Contains(err.Error(), "describes the cluster in "+other) {
		t.Fatalf("Load of another directory's state = %v, want a refusal", err)
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	work := t.TempDir()
	cmd, st := sleeper(t)
	c := testCluster(work)
	c.bootID = currentBootID(t)
	c.procs = []*proc{{name: "etcd", pid: cmd.Process.Pid, start: st}}
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	got, err := Load(work, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"Work", got.Work, c.Work}, {"Run", got.Run, c.Run}, {"Bin", got.Bin, c.Bin},
		{"KubeletDir", got.KubeletDir, c.KubeletDir}, {"Kubeconfig", got.Kubeconfig, c.Kubeconfig},
		{"Containerd", got.Containerd, c.Containerd}, {"APIPort", got.APIPort, c.APIPort},
		{"existed", got.existed, c.existed}, {"sysctls", got.sysctlSaved, c.sysctlSaved},
		{"mountedBPF", got.mountedBPF, c.mountedBPF}, {"iptables", got.iptables, c.iptables},
		{"bootID", got.bootID, c.bootID}, {"detach", got.detach, true},
	} {
		if !reflect.DeepEqual(f.got, f.want) {
			t.Errorf("%s after the round trip = %v, want %v", f.name, f.got, f.want)
		}
	}
	if len(got.procs) != 1 || got.procs[0].pid != cmd.Process.Pid || got.procs[0].start != st || got.procs[0].name != "etcd" {
		t.Fatalf("procs after the round trip = %+v", got.procs[0])
	}
	if !got.running("etcd") {
		t.Fatal("the loaded etcd (a live sleep) is not seen running")
	}
	// The loaded process is stopped by its pidfd.
	if err := got.procs[0].stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if got.running("etcd") {
		t.Fatal("etcd still seen running after stop")
	}
}

func currentBootID(t *testing.T) string {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		t.Skipf("no boot id: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// A recorded pid that now names another process (its start time differs)
// makes Load refuse, and nothing is signalled.
func TestLoadRefusesReusedPid(t *testing.T) {
	work := t.TempDir()
	cmd, st := sleeper(t)
	c := testCluster(work)
	c.bootID = currentBootID(t)
	c.procs = []*proc{{name: "kubelet", pid: cmd.Process.Pid, start: st - 1}}
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	_, err := Load(work, nil)
	if err == nil {
		t.Fatal("Load accepted a pid whose start time does not match")
	}
	for _, want := range []string{"pid " + strconv.Itoa(cmd.Process.Pid), "kubelet", "another process", "nothing was touched"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !alive(cmd.Process.Pid) {
		t.Fatal("the process with the reused pid was killed")
	}
	// stop itself (used by Down) never signals a process whose start time
	// differs either.
	if err := c.procs[0].stop(100 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if !alive(cmd.Process.Pid) {
		t.Fatal("stop killed a process whose start time differs from the recorded one")
	}
	if !c.procs[0].exited() {
		t.Fatal("a process whose pid was reused is not seen as exited")
	}
}

// Processes that are gone (or ran before a reboot) are fine: there is
// nothing to stop, the rest of the teardown still runs.
func TestLoadGoneProcesses(t *testing.T) {
	work := t.TempDir()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	live, st := sleeper(t)
	c := testCluster(work)
	c.bootID = currentBootID(t)
	c.procs = []*proc{{name: "etcd", pid: cmd.Process.Pid, start: 1}}
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	got, err := Load(work, t.Logf)
	if err != nil {
		t.Fatalf("Load with an exited process: %v", err)
	}
	if got.running("etcd") {
		t.Fatal("an exited process is seen running")
	}
	// Another boot: the live pid with a different start time is not ours.
	c.bootID = "another-boot"
	c.procs = []*proc{{name: "etcd", pid: live.Process.Pid, start: st + 1}}
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	if got, err = Load(work, t.Logf); err != nil {
		t.Fatalf("Load of a state from before a reboot: %v", err)
	}
	if got.running("etcd") {
		t.Fatal("a process from before the reboot is seen running")
	}
	if !alive(live.Process.Pid) {
		t.Fatal("the live process was touched")
	}
}

func TestStartTimeParsesOddNames(t *testing.T) {
	// The command name may hold spaces and parentheses.
	dir := t.TempDir()
	exe := filepath.Join(dir, "a) b (c")
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip(err)
	}
	if err := os.Symlink(sleep, exe); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	st, err := startTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	self, err := startTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st < self {
		t.Fatalf("child's start time %d before ours %d", st, self)
	}
}

// Up refuses a work directory holding another cluster's state, and the
// Down every caller runs after a failed Up then touches nothing: not the
// other cluster's state, not the host paths (it never saw them exist).
func TestDownAfterRefusedUpTouchesNothing(t *testing.T) {
	if os.Geteuid() == 0 {
		// Were the guard broken, Down would act on the host's mounts,
		// network namespaces and cgroups.
		t.Skip("runs without root only; run the test binary as an unprivileged user")
	}
	work, run, host := t.TempDir(), t.TempDir(), t.TempDir()
	if err := testCluster(work).Save(); err != nil {
		t.Fatal(err)
	}
	kept := filepath.Join(host, "var-lib-kubelet")
	if err := os.Mkdir(kept, 0o755); err != nil {
		t.Fatal(err)
	}
	c := New(Options{Work: work, Bin: "/nonexistent/bin"})
	c.Run, c.hostPaths = run, []string{kept}
	err := c.Up(context.Background())
	if err == nil || !strings.Contains(err.Error(), "make cluster-down") {
		t.Fatalf("Up over another cluster's state = %v, want a refusal naming make cluster-down", err)
	}
	if errs := c.Down(); len(errs) != 0 {
		t.Fatalf("Down after the refused Up: %v", errs)
	}
	for _, p := range []string{StatePath(work), kept} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("Down after a refused Up removed %s: %v", p, err)
		}
	}
}

// A Down that could not undo everything keeps the state (without the
// stopped processes), so that cluster-down can run again. Without root
// only: as root Down acts on the host's mounts, network and cgroups; here
// those fail harmlessly and a host path the cluster "made" under a
// read-only directory cannot be removed.
func TestDownKeepsStateWhenSomethingStays(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("runs without root only (as root Down would act on the host); run the test binary as an unprivileged user")
	}
	work, run, host := t.TempDir(), t.TempDir(), t.TempDir()
	locked := filepath.Join(host, "locked")
	made := filepath.Join(locked, "made")
	if err := os.MkdirAll(made, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(locked, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(locked, 0o755) })
	c := testCluster(work)
	c.Run, c.hostPaths, c.touched = run, []string{made}, true
	c.existed = map[string]bool{made: false, "/run/netns": true, "/var/lib/kubelet": true, "/run/containerd": true}
	c.sysctlSaved, c.iptables, c.mountedBPF = map[string]string{}, "", false
	c.bootID = currentBootID(t)
	c.procs = []*proc{{name: "etcd", pid: 1 << 22, start: 1}} // gone
	errs := c.Down()
	if len(errs) == 0 {
		t.Fatal("Down reported nothing left, but the host path could not be removed")
	}
	got, err := Load(work, t.Logf)
	if err != nil {
		t.Fatalf("the state after a partial Down: %v (errors: %v)", err, errs)
	}
	if len(got.procs) != 0 || !reflect.DeepEqual(got.existed, c.existed) {
		t.Fatalf("state after a partial Down: procs %v, existed %v", got.procs, got.existed)
	}
}
