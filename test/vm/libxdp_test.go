package vm

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
	"github.com/bpfmount/bpfmount/test/vm/progs"
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

// What libxdp 1.3.1 cannot do with a bpfmount chain: join it. bpfmount
// attaches its XDP dispatcher with a bpf_link (pinned, so it survives the
// daemon); libxdp attaches and swaps dispatchers through netlink
// (XDP_FLAGS_REPLACE), which the kernel refuses for a program held by a
// link. `xdp-loader load` on such an interface fails and changes nothing:
// the chain keeps its dispatcher and members.
func TestLibxdpCannotJoinLinkedChain(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	h := xdpCase
	host, _ := vethPair(t)
	c, err := dispatcher.Open(h.target(host), pinDir(t), dispatcher.WithLibxdpPins(libxdpDir))
	if err != nil {
		t.Fatal(err)
	}
	defer setChain(c)
	a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
	if err := setChain(c, members(a)...); err != nil {
		t.Fatal(err)
	}
	before := c.Revision()
	obj := filepath.Join(t.TempDir(), "members.o")
	if err := os.WriteFile(obj, progs.Object(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(xdpLoader, "load", "-m", "native", "-n", "xdp_count", host.Name, obj).CombinedOutput()
	t.Logf("xdp-loader load: %v\n%s", err, out)
	if err == nil {
		t.Fatal("xdp-loader joined a chain attached with a bpf_link: libxdp can now share bpfmount's chains; turn this test around")
	}
	if _, got := xdpLoaderStatus(t, host.Name); len(got) != 1 || c.Revision() != before {
		t.Fatalf("after the refused load the chain shows %v (revision %d, was %d)", got, c.Revision(), before)
	}
	if ret, trail := testRun(t, c); ret != h.final || len(trail) != 1 || trail[0] != 1 {
		t.Fatalf("the chain no longer runs its member: verdict %d, trail %v", ret, trail)
	}
}

// The loader's LibxdpDir option: XDP volumes chained by the loader show in
// xdp-loader status, and their libxdp pins go with the last of them.
func TestLoaderPublishesToLibxdp(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	img, err := bytecode.Build(progs.Object(), "members_bpfel.o", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if err := bytecode.WriteLayout(layout, "v1", img); err != nil {
		t.Fatal(err)
	}
	l, err := loader.New(loader.Options{Root: pinDir(t), Fetcher: bytecode.Layout{}, NodeName: "vm", LibxdpDir: libxdpDir})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	host, _ := vethPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	held := map[string]string{} // key -> owner
	for _, prio := range []int{30, 5} {
		r, err := l.Resolve(ctx, loader.Request{
			Image: bytecode.Request{Reference: bytecode.LayoutScheme + layout + ":v1"}, Program: progs.MembersProgXdpMember,
			Hook: loader.HookXDP, Interface: host.Name, Priority: prio,
			Globals: map[string][]byte{progs.MembersVarVerdict: binary.LittleEndian.AppendUint32(nil, xdpPass)},
		})
		if err != nil {
			t.Fatal(err)
		}
		owner := fmt.Sprint("vol-", prio)
		p, err := l.Acquire(ctx, r, owner)
		if err != nil {
			t.Fatal(err)
		}
		held[p.Key] = owner
	}
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "5 xdp_member,30 xdp_member" {
		t.Fatalf("xdp-loader sees %v, want the two volumes' programs at priorities 5 and 30", got)
	}
	for key, owner := range held {
		if err := l.Release(key, owner); err != nil {
			t.Fatal(err)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(libxdpDir, fmt.Sprintf("dispatch-%d-*", host.Index))); len(m) != 0 {
		t.Fatalf("libxdp pins left after the last release: %v", m)
	}
}
