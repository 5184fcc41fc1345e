package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// xdpLoader is Debian's xdp-loader (xdp-tools 1.3.1), which run.sh puts in
// the VM with -rootfs.
const xdpLoader = "/usr/sbin/xdp-loader"

// libxdpDir is libxdp's pin directory on the VM's bpffs.
const libxdpDir = "/sys/fs/bpf/xdp"

func requireXDPLoader(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(xdpLoader); err != nil {
		if os.Getenv("VMTEST_LIBXDP") != "" {
			t.Fatalf("VMTEST_LIBXDP is set but %s is missing: %v", xdpLoader, err)
		}
		t.Skipf("skipping: no %s in the VM (run.sh merges Debian's xdp-tools into the VM with vmexec -rootfs)", xdpLoader)
	}
}

// xdpLoaderStatus returns, for the interface's chain as `xdp-loader
// status` shows it, the dispatcher's program name and the members as
// "priority name" in run order.
func xdpLoaderStatus(t *testing.T, ifname string) (string, []string) {
	t.Helper()
	out, err := exec.Command(xdpLoader, "status", ifname).CombinedOutput()
	if err != nil {
		t.Fatalf("xdp-loader status %s: %v\n%s", ifname, err, out)
	}
	t.Logf("xdp-loader status %s:\n%s", ifname, out)
	var main string
	var members []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == ifname:
			main = f[1]
		case len(f) >= 3 && f[0] == "=>":
			members = append(members, f[1]+" "+f[2])
		}
	}
	return main, members
}

// libxdp's tools see a bpfmount chain published with WithLibxdpPins: the
// dispatcher and its members with their priorities, in run order, after
// each change; the pins of swapped-out revisions go, and emptying the
// chain leaves none.
func TestLibxdpSeesChain(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	h := xdpCase
	host, _ := vethPair(t)
	c, err := dispatcher.Open(h.target(host), pinDir(t), dispatcher.WithLibxdpPins(libxdpDir))
	if err != nil {
		t.Fatal(err)
	}
	defer setChain(c)
	a := loadMember(t, h, "", 1, h.proceed, 20, h.mask(h.proceed))
	b := loadMember(t, h, "", 2, h.proceed, 10, h.mask(h.proceed))
	if err := setChain(c, members(a, b)...); err != nil {
		t.Fatal(err)
	}
	name := h.prog
	if len(name) > 15 {
		name = name[:15] // the kernel keeps 15 characters of a program name
	}
	main, got := xdpLoaderStatus(t, host.Name)
	if want := []string{"10 " + name, "20 " + name}; main != "xdp_dispatcher" || strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("xdp-loader sees dispatcher %q with members %v; want xdp_dispatcher with %v", main, got, want)
	}
	if err := c.Update(nil, []string{b.Key}); err != nil {
		t.Fatal(err)
	}
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "20 "+name {
		t.Fatalf("after removing a member xdp-loader sees %v", got)
	}
	pins := func() []string {
		m, _ := filepath.Glob(filepath.Join(libxdpDir, fmt.Sprintf("dispatch-%d-*", host.Index)))
		return m
	}
	// The swapped-out revision's pins go once it is retired.
	if err := setChain(c, members(a)...); err != nil {
		t.Fatal(err)
	}
	if err := c.Update(nil, []string{a.Key}); err != nil {
		t.Fatal(err)
	}
	if p := pins(); len(p) != 0 {
		t.Fatalf("libxdp pins left after emptying the chain: %v", p)
	}
}
