package vm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/internal/testenv"
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

// What libxdp 1.3.1 cannot do with a chain opened without libxdp pins
// (bpfmount without --libxdp-dir): join it, or take a program out of it.
// Such a chain attaches its XDP dispatcher with a bpf_link (pinned, so it
// survives the daemon); libxdp attaches and swaps dispatchers through
// netlink (XDP_FLAGS_REPLACE), which the kernel refuses with EBUSY for a
// program a link holds. `xdp-loader load` and `xdp-loader unload --all` on
// such an interface fail with EBUSY and change nothing: the chain keeps its
// dispatcher and its member, which goes on counting every frame sent.
func TestLibxdpCannotJoinLinkedChain(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	h := xdpCase
	host, peer := vethPair(t)
	c, err := dispatcher.Open(h.target(host), pinDir(t))
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
	if err := os.WriteFile(obj, withVerdict(t, progs.Object(), xdpPass), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"load", "-m", "native", "-n", progs.MembersProgXdpCount, "-P", "5", host.Name, obj},
		{"unload", "--all", host.Name},
	} {
		out, err := exec.Command(xdpLoader, args...).CombinedOutput()
		t.Logf("xdp-loader %s: %v\n%s", args[0], err, out)
		if err == nil {
			t.Fatalf("xdp-loader %s succeeded on a chain attached with a bpf_link: libxdp can now change bpfmount's chains; turn this test around and fix the docs", args[0])
		}
		// xdp-loader prints the kernel's errno; EBUSY is the link's refusal.
		if !strings.Contains(string(out), "Device or resource busy") {
			t.Fatalf("xdp-loader %s failed otherwise than with EBUSY:\n%s", args[0], out)
		}
		if live := xdpProgID(t, host.Index); live != uint32(progID(t, c.Dispatcher())) || c.Revision() != before {
			t.Fatalf("after the refused %s the interface runs program %d (revision %d, was %d)", args[0], live, c.Revision(), before)
		}
	}
	if ret, trail := testRun(t, c); ret != h.final || len(trail) != 1 || trail[0] != 1 {
		t.Fatalf("the chain no longer runs its member: verdict %d, trail %v", ret, trail)
	}
	const frames = 50
	was := a.runs(t)
	newSender(t, peer, host).send(t, frames)
	time.Sleep(200 * time.Millisecond) // let the receive path drain
	if got := a.runs(t) - was; got != frames {
		t.Fatalf("bpfmount's member counted %d of %d frames after libxdp's refused attempts", got, frames)
	}
}

// The reverse: without --libxdp-dir bpfmount cannot join a dispatcher
// libxdp attached, since the kernel refuses a bpf_link over a program
// attached through netlink (EBUSY). Publishing an XDP volume on such an
// interface fails with FailedPrecondition saying so and what to do
// (--libxdp-dir, or xdp-loader unload), leaves nothing behind, and
// libxdp's program goes on counting every frame.
func TestBpfmountCannotJoinLibxdpChain(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	v := testenv.NewVeth(t)
	obj := filepath.Join(t.TempDir(), "members.o")
	if err := os.WriteFile(obj, withVerdict(t, progs.Object(), xdpPass), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(xdpLoader, "load", "-m", "native", "-n", progs.MembersProgXdpCount, "-P", "5", v.Host, obj).CombinedOutput()
	if err != nil {
		t.Fatalf("xdp-loader load: %v\n%s", err, out)
	}
	defer exec.Command(xdpLoader, "unload", "--all", v.Host).Run()
	main, want := xdpLoaderStatus(t, v.Host)
	if main != xdplinkDispatcherName || len(want) != 1 {
		t.Fatalf("xdp-loader made %q with %v, want libxdp's dispatcher with one program", main, want)
	}
	positions := libxdpMemberMap(t, v.Host, progs.MembersMapPositions)
	counted := func() uint64 {
		var n uint64
		if err := positions.Lookup(uint32(0), &n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	target := filepath.Join(testenv.ShortTempDir(t), "vol")
	img := testenv.LayoutBytes(t, progs.Object(), "members.o", "v1")
	_, err = d.Node.NodePublishVolume(context.Background(), volReq("vol-x", target, map[string]string{
		"image": img, "program": progs.MembersProgXdpCount, "interface": v.Host, "priority": "1",
		"globals": "verdict=" + hex32(xdpPass),
	}))
	msg := status.Convert(err).Message()
	t.Logf("publish onto libxdp's chain: %v", err)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(msg, "xdp-loader unload --all "+v.Host) || !strings.Contains(msg, "bpf_link") || !strings.Contains(msg, "--libxdp-dir") {
		t.Fatalf("publish onto libxdp's dispatcher: %v; want FailedPrecondition explaining the bpf_link refusal and naming --libxdp-dir and xdp-loader unload", err)
	}
	if m := testenv.MountsUnder(t, target); len(m) > 0 {
		t.Errorf("mounts left at the target: %v", m)
	}
	for _, dir := range []string{"programs", "dispatchers"} {
		if f := testenv.Files(t, filepath.Join(d.BPFFSRoot, dir)); len(f) > 0 {
			t.Errorf("%s pins left behind: %v", dir, f)
		}
	}
	if main, got := xdpLoaderStatus(t, v.Host); main != xdplinkDispatcherName || strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("after the refused publish xdp-loader shows %q with %v, want %v", main, got, want)
	}
	const frames = 50
	was := counted()
	if err := v.Send(frames, 64); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if got := counted() - was; got < frames {
		t.Fatalf("libxdp's program counted %d of %d frames after the refused publish", got, frames)
	}
}

// xdpProgID is the ID of the program on the interface's XDP hook.
func xdpProgID(t testing.TB, ifindex int) uint32 {
	t.Helper()
	x := mustLink(t, ifindex).Attrs().Xdp
	if x == nil {
		return 0
	}
	return x.ProgId
}

// libxdpProgIDs returns the program IDs of the chain libxdp pinned for the
// interface's attached dispatcher, in slot order.
func libxdpProgIDs(t testing.TB, ifindex int) []ebpf.ProgramID {
	t.Helper()
	dir := filepath.Join(libxdpDir, fmt.Sprintf("dispatch-%d-%d", ifindex, xdpProgID(t, ifindex)))
	var ids []ebpf.ProgramID
	for i := 0; ; i++ {
		p, err := ebpf.LoadPinnedProgram(filepath.Join(dir, fmt.Sprintf("prog%d-prog", i)), &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, progID(t, p))
		p.Close()
	}
	if len(ids) == 0 {
		t.Fatalf("no libxdp pins in %s", dir)
	}
	return ids
}

func progID(t testing.TB, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("the kernel reports no program ID")
	}
	return id
}

// libxdpMemberMap opens the map called name of the first program in the
// chain libxdp attached to the interface (found through libxdp's pins).
func libxdpMemberMap(t testing.TB, ifname, name string) *ebpf.Map {
	t.Helper()
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	pins, _ := filepath.Glob(filepath.Join(libxdpDir, fmt.Sprintf("dispatch-%d-*", ifc.Index), "prog0-prog"))
	if len(pins) != 1 {
		t.Fatalf("libxdp's first program on %s: pins %v, want one", ifname, pins)
	}
	prog, err := ebpf.LoadPinnedProgram(pins[0], &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	return libxdpMemberMapOf(t, prog, name)
}

// libxdpMemberMapOf opens the map called name of a program.
func libxdpMemberMapOf(t testing.TB, prog *ebpf.Program, name string) *ebpf.Map {
	t.Helper()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		if mi, err := m.Info(); err == nil && mi.Name == name {
			t.Cleanup(func() { m.Close() })
			return m
		}
		m.Close()
	}
	t.Fatalf("program %q has no map %q", info.Name, name)
	return nil
}

// xdplinkDispatcherName is the dispatcher's program name as xdp-loader
// status shows it.
const xdplinkDispatcherName = "xdp_dispatcher"

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
