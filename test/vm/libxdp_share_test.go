package vm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/internal/failpoint"
	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
	"github.com/bpfmount/bpfmount/test/vm/progs"
)

// libxdpObject writes the test members' object with XDP_PASS as the
// verdict, for xdp-loader to load.
func libxdpObject(t testing.TB) string {
	t.Helper()
	obj := filepath.Join(t.TempDir(), "members.o")
	if err := os.WriteFile(obj, withVerdict(t, progs.Object(), xdpPass), 0o600); err != nil {
		t.Fatal(err)
	}
	return obj
}

// libxdpPins lists libxdp's pin directories of the interface.
func libxdpPins(ifindex int) []string {
	m, _ := filepath.Glob(filepath.Join(libxdpDir, fmt.Sprintf("dispatch-%d-*", ifindex)))
	return m
}

// sum adds up a positions map.
func sum(t testing.TB, m *ebpf.Map) uint64 {
	t.Helper()
	var n, v uint64
	it := m.Iterate()
	var k uint32
	for it.Next(&k, &v) {
		n += v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// countsAll sends frames and checks that each counter saw every one: no
// more either when exact (a peer of testenv.NewVeth has IPv6 on and may
// add frames of its own, so there it is not).
func countsAll(t testing.TB, exact bool, send func(int), when string, counters map[string]func() uint64) {
	t.Helper()
	const frames = 20
	was := map[string]uint64{}
	for name, f := range counters {
		was[name] = f()
	}
	send(frames)
	time.Sleep(200 * time.Millisecond) // let the receive path drain
	for name, f := range counters {
		if got := f() - was[name]; got < frames || exact && got != frames {
			t.Errorf("%s %s counted %d of %d frames", when, name, got, frames)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// One chain shared with libxdp, libxdp joining: on an interface where a
// chain opened with libxdp pins runs, `xdp-loader load` joins the same
// chain in priority order (libxdp swaps in a dispatcher of its own); the
// chain's next changes (an add, a removal) rebase onto libxdp's dispatcher
// and keep libxdp's program in priority order; `xdp-loader unload` of it
// leaves the chain's members; after `ip link set xdp off` the chain's next
// change puts every member back; removing the last member detaches the
// dispatcher and leaves no pin. Every program counts every frame sent
// throughout.
func TestLibxdpJoinsSharedChain(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	h := xdpCase
	host, peer := vethPair(t)
	dir := pinDir(t)
	c, err := dispatcher.Open(h.target(host), dir, dispatcher.WithLibxdpPins(libxdpDir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer exec.Command(xdpLoader, "unload", "--all", host.Name).Run()
	a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
	b := loadMember(t, h, "", 2, h.proceed, 20, h.mask(h.proceed))
	if err := c.Update(members(a), nil); err != nil {
		t.Fatal(err)
	}
	s := newSender(t, peer, host)
	send := func(n int) { s.send(t, n) }
	counters := map[string]func() uint64{"member a": func() uint64 { return a.runs(t) }}
	countsAll(t, true, send, "alone,", counters)

	xdpLoaderLoad(t, host.Name, libxdpObject(t), 5)
	main, got := xdpLoaderStatus(t, host.Name)
	if want := "5 " + progs.MembersProgXdpCount + ",10 " + h.prog; main != xdplinkDispatcherName || strings.Join(got, ",") != want {
		t.Fatalf("after xdp-loader load: %q with %v, want %s", main, got, want)
	}
	ids := libxdpProgIDs(t, host.Index)
	theirs := ids[0]
	positions := libxdpMemberMap(t, host.Name, progs.MembersMapPositions)
	counters["libxdp's program"] = func() uint64 { return sum(t, positions) }
	countsAll(t, true, send, "after xdp-loader load,", counters)

	// bpfmount's next change keeps libxdp's program, in priority order.
	if err := c.Update(members(b), nil); err != nil {
		t.Fatal(err)
	}
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "5 "+progs.MembersProgXdpCount+",10 "+h.prog+",20 "+h.prog {
		t.Fatalf("after adding a member: %v", got)
	}
	if live := xdpProgID(t, host.Index); live != uint32(progID(t, c.Dispatcher())) {
		t.Fatalf("the interface runs program %d, not the chain's new revision", live)
	}
	if p := libxdpPins(host.Index); len(p) != 1 {
		t.Fatalf("libxdp pins %v, want the live dispatcher's alone", p)
	}
	if ks := keys(c.Members()); strings.Join(ks, ",") != a.Key+","+b.Key {
		t.Fatalf("the chain's own members are %v, want a and b (libxdp's left out)", ks)
	}
	counters["member b"] = func() uint64 { return b.runs(t) }
	countsAll(t, true, send, "after bpfmount added a member,", counters)

	if err := c.Update(nil, []string{b.Key}); err != nil {
		t.Fatal(err)
	}
	delete(counters, "member b")
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "5 "+progs.MembersProgXdpCount+",10 "+h.prog {
		t.Fatalf("after removing a member: %v", got)
	}
	countsAll(t, true, send, "after bpfmount removed a member,", counters)

	if out, err := exec.Command(xdpLoader, "unload", "-i", fmt.Sprint(theirs), host.Name).CombinedOutput(); err != nil {
		t.Fatalf("xdp-loader unload -i %d: %v\n%s", theirs, err, out)
	}
	delete(counters, "libxdp's program")
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "10 "+h.prog {
		t.Fatalf("after xdp-loader unload of its program: %v, want bpfmount's alone", got)
	}
	countsAll(t, true, send, "after xdp-loader unload,", counters)

	// Nothing holds a netlink attach: `ip link set xdp off` takes the
	// chain off, and its next change puts every member back.
	if err := netlink.LinkSetXdpFd(mustLink(t, host.Index), -1); err != nil {
		t.Fatal(err)
	}
	if err := c.Update(members(b), nil); err != nil {
		t.Fatalf("a change after the chain was detached: %v", err)
	}
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "10 "+h.prog+",20 "+h.prog {
		t.Fatalf("after a change of the detached chain: %v, want both members back", got)
	}
	counters["member b"] = func() uint64 { return b.runs(t) }
	countsAll(t, true, send, "re-attached after a detach,", counters)

	// The chain follows libxdp's last swap, and its last member detaches.
	if err := c.Update(nil, []string{a.Key, b.Key}); err != nil {
		t.Fatal(err)
	}
	if live := xdpProgID(t, host.Index); live != 0 {
		t.Fatalf("program %d still attached after the last member left", live)
	}
	if p := libxdpPins(host.Index); len(p) != 0 {
		t.Fatalf("libxdp pins left: %v", p)
	}
	if f := testenv.Files(t, dir); len(f) != 0 {
		t.Fatalf("chain pins left: %v", f)
	}
}

func keys(ms []dispatcher.Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Key)
	}
	return out
}

// positionsAt opens a volume's pinned positions map.
func positionsAt(t testing.TB, target string) *ebpf.Map {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(target, progs.MembersMapPositions), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// One chain shared with libxdp, bpfmount joining: with --libxdp-dir,
// XDP volumes published on an interface where `xdp-loader load` attached
// libxdp's dispatcher join that chain in priority order, around libxdp's
// program, which keeps counting every frame; unpublishing the last volume
// leaves libxdp's program running alone, in a dispatcher xdp-loader still
// manages, and nothing of bpfmount's behind.
func TestBpfmountJoinsLibxdpChain(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	d := testenv.StartDaemon(t, testenv.DaemonOptions{ConfigureLoader: func(o *loader.Options) { o.LibxdpDir = libxdpDir }})
	v := testenv.NewVeth(t)
	xdpLoaderLoad(t, v.Host, libxdpObject(t), 5)
	defer exec.Command(xdpLoader, "unload", "--all", v.Host).Run()
	positions := libxdpMemberMap(t, v.Host, progs.MembersMapPositions)
	send := func(n int) {
		if err := v.Send(n, 64); err != nil {
			t.Fatal(err)
		}
	}
	counters := map[string]func() uint64{"libxdp's program": func() uint64 { return sum(t, positions) }}

	dir := testenv.ShortTempDir(t)
	img := testenv.LayoutBytes(t, progs.Object(), "members.o", "v1")
	for _, vol := range []struct{ name, prio string }{{"vol-1", "1"}, {"vol-10", "10"}} {
		target := filepath.Join(dir, vol.name)
		if _, err := d.Node.NodePublishVolume(testenv.Ctx(t), volReq(vol.name, target, map[string]string{
			"image": img, "program": progs.MembersProgXdpCount, "interface": v.Host, "priority": vol.prio,
			"globals": "verdict=" + hex32(xdpPass),
		})); err != nil {
			t.Fatalf("publishing %s onto libxdp's chain: %v", vol.name, err)
		}
		m := positionsAt(t, target)
		counters[vol.name] = func() uint64 { return sum(t, m) }
	}
	c := progs.MembersProgXdpCount
	main, got := xdpLoaderStatus(t, v.Host)
	if want := "1 " + c + ",5 " + c + ",10 " + c; main != xdplinkDispatcherName || strings.Join(got, ",") != want {
		t.Fatalf("xdp-loader shows %q with %v, want %s", main, got, want)
	}
	countsAll(t, false, send, "bpfmount joined,", counters)

	// libxdp's program holds one of the ten slots, and the refusal of an
	// eleventh program says so.
	vols := []string{"vol-10", "vol-1"}
	publish := func(vol string, prio int) error {
		_, err := d.Node.NodePublishVolume(testenv.Ctx(t), volReq(vol, filepath.Join(dir, vol), map[string]string{
			"image": img, "program": progs.MembersProgXdpCount, "interface": v.Host, "priority": fmt.Sprint(prio),
			"globals": "verdict=" + hex32(xdpPass),
		}))
		return err
	}
	for prio := 11; prio <= 17; prio++ {
		vol := fmt.Sprint("vol-", prio)
		if err := publish(vol, prio); err != nil {
			t.Fatalf("publishing %s (the %dth program beside libxdp's): %v", vol, prio-7, err)
		}
		vols = append(vols, vol)
	}
	err := publish("vol-extra", 30)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "1 of libxdp's programs") {
		t.Fatalf("an eleventh program beside libxdp's: %v, want ResourceExhausted naming libxdp's program among the holders", err)
	}
	t.Logf("eleventh program: %v", err)

	for _, vol := range vols {
		if _, err := d.Node.NodeUnpublishVolume(testenv.Ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: filepath.Join(dir, vol)}); err != nil {
			t.Fatal(err)
		}
		delete(counters, vol)
	}
	main, got = xdpLoaderStatus(t, v.Host)
	if main != xdplinkDispatcherName || strings.Join(got, ",") != "5 "+c {
		t.Fatalf("after the last unpublish xdp-loader shows %q with %v, want libxdp's program alone", main, got)
	}
	for _, sub := range []string{"programs", "dispatchers"} {
		if f := testenv.Files(t, filepath.Join(d.BPFFSRoot, sub)); len(f) > 0 {
			t.Errorf("%s pins left behind: %v", sub, f)
		}
	}
	countsAll(t, false, send, "after bpfmount left,", counters)
	// xdp-loader still manages what bpfmount left it.
	if out, err := exec.Command(xdpLoader, "unload", "--all", v.Host).CombinedOutput(); err != nil {
		t.Fatalf("xdp-loader unload --all after bpfmount left: %v\n%s", err, out)
	}
	if p := libxdpPins(mustIndex(t, v.Host)); len(p) != 0 {
		t.Fatalf("libxdp pins left: %v", p)
	}
}

// A kill -9 inside a change of a chain shared with libxdp, at each of the
// chain's failpoints: the restarted daemon (with --libxdp-dir) ends with
// one revision, attached through netlink, holding bpfmount's volumes and
// libxdp's program in priority order; libxdp's pins name only the live
// dispatcher; every program counts; and the last unpublish leaves
// libxdp's program alone.
func TestCrashInSharedChainChange(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	if os.Getenv(testenv.PrebuiltEnv) == "" {
		t.Skipf("skipping: %s names no directory of daemon binaries (run.sh builds them)", testenv.PrebuiltEnv)
	}
	bin := testenv.BuildDaemon(t, "failpoints")
	obj := libxdpObject(t)
	c := progs.MembersProgXdpCount
	for _, step := range failpoint.ChainSteps {
		t.Run(step, func(t *testing.T) {
			p := testenv.NewProcDaemon(t, bin)
			p.Args = []string{"--libxdp-dir", libxdpDir}
			v := testenv.NewVeth(t)
			ifindex := mustIndex(t, v.Host)
			dir := testenv.ShortTempDir(t)
			img := testenv.LayoutBytes(t, progs.Object(), "members.o", "v1")
			req := func(vol, prio string) *csi.NodePublishVolumeRequest {
				return volReq(vol, filepath.Join(dir, vol), map[string]string{
					"image": img, "program": c, "interface": v.Host, "priority": prio, "globals": "verdict=" + hex32(xdpPass),
				})
			}
			p.Start(t)
			if _, err := p.Node.NodePublishVolume(testenv.Ctx(t), req("vol-10", "10")); err != nil {
				t.Fatal(err)
			}
			xdpLoaderLoad(t, v.Host, obj, 50)
			defer exec.Command(xdpLoader, "unload", "--all", v.Host).Run()
			theirs := libxdpProgIDs(t, ifindex)[1]
			p.Kill()
			p.Start(t, failpoint.Env+"="+step)
			// The old revision is retired after the publish has answered:
			// the call may succeed, but the daemon must die.
			p.Node.NodePublishVolume(testenv.Ctx(t), req("vol-90", "90"))
			if !p.Exited(10 * time.Second) {
				t.Fatalf("the daemon did not crash at %s", step)
			}
			p.Start(t)
			var err error
			for range 50 {
				if _, err = p.Node.NodePublishVolume(testenv.Ctx(t), req("vol-90", "90")); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("publish after the restart: %v", err)
			}
			main, got := xdpLoaderStatus(t, v.Host)
			if want := "10 " + c + ",50 " + c + ",90 " + c; main != xdplinkDispatcherName || strings.Join(got, ",") != want {
				t.Fatalf("after the crash and restart xdp-loader shows %q with %v, want %s", main, got, want)
			}
			live := xdpProgID(t, ifindex)
			revs, _ := filepath.Glob(filepath.Join(p.BPFFSRoot, "dispatchers", "*", "rev-*"))
			if len(revs) != 1 {
				t.Fatalf("revisions pinned: %v, want exactly one", revs)
			}
			disp, err := ebpf.LoadPinnedProgram(filepath.Join(revs[0], "dispatcher"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if id := progID(t, disp); uint32(id) != live {
				t.Fatalf("the pinned revision's dispatcher is program %d, the interface runs %d", id, live)
			}
			disp.Close()
			if p := libxdpPins(ifindex); len(p) != 1 || p[0] != filepath.Join(libxdpDir, fmt.Sprintf("dispatch-%d-%d", ifindex, live)) {
				t.Fatalf("libxdp pins %v, want the live dispatcher's (%d) alone", p, live)
			}
			ids := libxdpProgIDs(t, ifindex)
			if ids[1] != theirs {
				t.Fatalf("slot 1 runs program %d, not libxdp's %d", ids[1], theirs)
			}
			theirProg, err := ebpf.NewProgramFromID(theirs)
			if err != nil {
				t.Fatal(err)
			}
			defer theirProg.Close()
			counters := map[string]func() uint64{}
			for _, vol := range []string{"vol-10", "vol-90"} {
				m := positionsAt(t, filepath.Join(dir, vol))
				counters[vol] = func() uint64 { return sum(t, m) }
			}
			lm := libxdpMemberMapOf(t, theirProg, progs.MembersMapPositions)
			counters["libxdp's program"] = func() uint64 { return sum(t, lm) }
			send := func(n int) {
				if err := v.Send(n, 64); err != nil {
					t.Fatal(err)
				}
			}
			countsAll(t, false, send, "after the restart,", counters)
			unpublish := func(vol string) error {
				_, err := p.Node.NodeUnpublishVolume(testenv.Ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: filepath.Join(dir, vol)})
				return err
			}
			if err := unpublish("vol-10"); err != nil {
				t.Fatal(err)
			}
			delete(counters, "vol-10")
			// The last unpublish, which hands libxdp's program over, dies
			// at the same step.
			p.Kill()
			p.Start(t, failpoint.Env+"="+step)
			unpublish("vol-90")
			if !p.Exited(10 * time.Second) {
				t.Fatalf("the daemon did not crash at %s in the last unpublish", step)
			}
			delete(counters, "vol-90")
			p.Start(t)
			for range 50 {
				if err = unpublish("vol-90"); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("unpublish after the restart: %v", err)
			}
			if _, got := xdpLoaderStatus(t, v.Host); strings.Join(got, ",") != "50 "+c {
				t.Fatalf("after the last unpublish xdp-loader shows %v, want libxdp's program alone", got)
			}
			countsAll(t, false, send, "after bpfmount left,", counters)
			for _, sub := range []string{"programs", "dispatchers"} {
				if f := testenv.Files(t, filepath.Join(p.BPFFSRoot, sub)); len(f) > 0 {
					t.Errorf("%s pins left behind: %v", sub, f)
				}
			}
			if p := libxdpPins(ifindex); len(p) != 1 || p[0] != filepath.Join(libxdpDir, fmt.Sprintf("dispatch-%d-%d", ifindex, xdpProgID(t, ifindex))) {
				t.Fatalf("libxdp pins %v after bpfmount left, want the live dispatcher's alone", p)
			}
		})
	}
}

func mustIndex(t testing.TB, ifname string) int {
	t.Helper()
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	return ifc.Index
}

// A shared chain after a restart, and its slots: Open adopts a chain whose
// live dispatcher libxdp swapped in (bpfmount's members told apart from
// libxdp's by program ID), without rebuilding it; when libxdp took one of
// bpfmount's members out (`xdp-loader unload -i` of its program ID), Open
// swaps in a revision with it again, keeping libxdp's program. libxdp's
// programs count against the ten slots: nine of bpfmount's fit beside one
// of libxdp's, a tenth is Exhausted naming libxdp's program among the
// holders. Removing bpfmount's members leaves libxdp's program alone.
func TestSharedChainRestartAndSlots(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	h := xdpCase
	host, peer := vethPair(t)
	dir := pinDir(t)
	open := func() *dispatcher.Chain {
		t.Helper()
		c, err := dispatcher.Open(h.target(host), dir, dispatcher.WithLibxdpPins(libxdpDir))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := open()
	defer exec.Command(xdpLoader, "unload", "--all", host.Name).Run()
	a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
	if err := c.Update(members(a), nil); err != nil {
		t.Fatal(err)
	}
	xdpLoaderLoad(t, host.Name, libxdpObject(t), 5)
	theirs := libxdpProgIDs(t, host.Index)[0]
	positions := libxdpMemberMap(t, host.Name, progs.MembersMapPositions)
	c.Close()

	c = open()
	libxdps := xdpProgID(t, host.Index)
	if ks := keys(c.Members()); len(ks) != 1 || ks[0] != a.Key {
		t.Fatalf("adopted members %v, want a alone", ks)
	}
	if uint32(progID(t, c.Dispatcher())) == libxdps {
		t.Fatal("the chain claims libxdp's dispatcher as its revision")
	}
	if live := xdpProgID(t, host.Index); live != libxdps {
		t.Fatalf("Open replaced libxdp's dispatcher %d with %d; it runs every member already", libxdps, live)
	}
	c.Close()

	ours := progID(t, a.Program)
	if out, err := exec.Command(xdpLoader, "unload", "-i", fmt.Sprint(ours), host.Name).CombinedOutput(); err != nil {
		t.Fatalf("xdp-loader unload -i %d: %v\n%s", ours, err, out)
	}
	c = open()
	defer c.Close()
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "5 "+progs.MembersProgXdpCount+",10 "+h.prog {
		t.Fatalf("after Open with bpfmount's member taken out by libxdp: %v, want it back after libxdp's", got)
	}
	if live := xdpProgID(t, host.Index); live != uint32(progID(t, c.Dispatcher())) {
		t.Fatalf("the interface runs %d, not the chain's revision", live)
	}
	s := newSender(t, peer, host)
	counters := map[string]func() uint64{
		"member a":         func() uint64 { return a.runs(t) },
		"libxdp's program": func() uint64 { return sum(t, positions) },
	}
	countsAll(t, true, func(n int) { s.send(t, n) }, "after the restart,", counters)

	more := []*member{a}
	for i := 2; i <= 9; i++ {
		more = append(more, loadMember(t, h, "", uint8(i), h.proceed, 10+i, h.mask(h.proceed)))
	}
	if err := c.Update(members(more[1:]...), nil); err != nil {
		t.Fatalf("nine of bpfmount's members beside one of libxdp's: %v", err)
	}
	extra := loadMember(t, h, "", 10, h.proceed, 30, h.mask(h.proceed))
	err := c.Update(members(extra), nil)
	var ee *dispatcher.ExhaustedError
	if !errors.As(err, &ee) || !slices.Contains(ee.Holders, fmt.Sprintf("libxdp-%d", theirs)) || len(ee.Holders) != dispatcher.Slots {
		t.Fatalf("a tenth member of bpfmount's beside libxdp's: %v (holders %v), want Exhausted with libxdp's program among ten holders", err, ee)
	}
	if err := c.Update(nil, keys(members(more...))); err != nil {
		t.Fatal(err)
	}
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "5 "+progs.MembersProgXdpCount {
		t.Fatalf("after bpfmount's members left: %v, want libxdp's alone", got)
	}
	delete(counters, "member a")
	countsAll(t, true, func(n int) { s.send(t, n) }, "after bpfmount left,", counters)
	if f := testenv.Files(t, dir); len(f) != 0 {
		t.Fatalf("chain pins left: %v", f)
	}
}

// Turning --libxdp-dir on and off over live chains. On: a chain a run
// without libxdp pins attached with a bpf_link keeps its link (a netlink
// attach cannot take over without a gap) while it publishes its pins,
// and once emptied its next dispatcher is attached through netlink and
// shared. Off: a chain attached through netlink cannot be opened without
// libxdp pins (Precondition naming --libxdp-dir), and stays running.
func TestTurningLibxdpDirOnAndOff(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	h := xdpCase
	host, peer := vethPair(t)
	dir := pinDir(t)
	defer exec.Command(xdpLoader, "unload", "--all", host.Name).Run()
	a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
	b := loadMember(t, h, "", 2, h.proceed, 20, h.mask(h.proceed))
	c, err := dispatcher.Open(h.target(host), dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Update(members(a), nil); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c, err = dispatcher.Open(h.target(host), dir, dispatcher.WithLibxdpPins(libxdpDir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Update(members(b), nil); err != nil {
		t.Fatalf("a change of a linked chain opened with libxdp pins: %v", err)
	}
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "10 "+h.prog+",20 "+h.prog {
		t.Fatalf("xdp-loader sees %v, want both members", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "link")); err != nil {
		t.Fatalf("the linked chain lost its link: %v", err)
	}
	if err := c.Update(nil, []string{a.Key, b.Key}); err != nil {
		t.Fatal(err)
	}
	if err := c.Update(members(a), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "link")); !os.IsNotExist(err) {
		t.Fatalf("the chain's next dispatcher has a link pin (%v); it was to be attached through netlink", err)
	}
	xdpLoaderLoad(t, host.Name, libxdpObject(t), 5)
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "5 "+progs.MembersProgXdpCount+",10 "+h.prog {
		t.Fatalf("xdp-loader load did not join the emptied and refilled chain: %v", got)
	}
	c.Close()

	live := xdpProgID(t, host.Index)
	_, err = dispatcher.Open(h.target(host), dir)
	if fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "--libxdp-dir") {
		t.Fatalf("opening a shared chain without libxdp pins: %v, want Precondition naming --libxdp-dir", err)
	}
	if got := xdpProgID(t, host.Index); got != live {
		t.Fatalf("the refused open changed the attached program from %d to %d", live, got)
	}
	s := newSender(t, peer, host)
	countsAll(t, true, func(n int) { s.send(t, n) }, "after the refused open,", map[string]func() uint64{"member a": func() uint64 { return a.runs(t) }})
}

// No frame skips a shared chain during its swaps: with libxdp's program
// joined (between bpfmount's middle and last members), the middle member
// is removed and added back again and again while frames flow, each
// change a netlink replace under libxdp's lock; the first and last
// members and libxdp's program each see exactly the frames sent. run.sh
// runs it again with two vCPUs, frames on CPU 0 and swaps on CPU 1.
func TestSharedSwapUnderTraffic(t *testing.T) {
	requireVM(t)
	requireXDPLoader(t)
	cpus := wantCPUs(t)
	h := xdpCase
	host, peer := vethPair(t)
	c, err := dispatcher.Open(h.target(host), pinDir(t), dispatcher.WithLibxdpPins(libxdpDir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer exec.Command(xdpLoader, "unload", "--all", host.Name).Run()
	first, middle, last := runThree(t, h, c)
	xdpLoaderLoad(t, host.Name, libxdpObject(t), 25)
	ids := libxdpProgIDs(t, host.Index)
	theirProg, err := ebpf.NewProgramFromID(ids[2])
	if err != nil {
		t.Fatal(err)
	}
	defer theirProg.Close()
	positions := libxdpMemberMapOf(t, theirProg, progs.MembersMapPositions)
	theirsBefore := sum(t, positions)
	s := newSender(t, peer, host)
	f0, m0, l0 := first.runs(t), middle.runs(t), last.runs(t)
	const rounds = 10
	sent := duringTraffic(t, cpus, s, func() {
		time.Sleep(50 * time.Millisecond)
		if toggleMember(t, c, middle, rounds) {
			time.Sleep(50 * time.Millisecond)
		}
	})
	f, m, l, theirs := first.runs(t)-f0, middle.runs(t)-m0, last.runs(t)-l0, sum(t, positions)-theirsBefore
	t.Logf("%d CPUs: %d frames sent; first saw %d, middle %d, libxdp's program %d, last %d; revision %d", cpus, sent, f, m, theirs, l, c.Revision())
	if m == 0 || m >= f {
		t.Errorf("traffic did not flow through both chain shapes: first %d, middle %d", f, m)
	}
	if sent == 0 || f != sent || l != sent || theirs != sent {
		t.Errorf("%d frames sent during the swaps; the first member saw %d, libxdp's program %d, the last %d: a frame skipped the shared chain or met a partial one", sent, f, theirs, l)
	}
	if _, got := xdpLoaderStatus(t, host.Name); strings.Join(got, ",") != "10 "+h.prog+",20 "+h.prog+",25 "+progs.MembersProgXdpCount+",30 "+h.prog {
		t.Fatalf("after the swaps: %v", got)
	}
	if err := c.Update(nil, keys(members(first, middle, last))); err != nil {
		t.Fatal(err)
	}
}

// A shared chain whose interface was deleted (the kernel detached its
// dispatcher) can be adopted and emptied member by member, leaving no
// pin of its own or in libxdp's layout.
func TestSharedChainInterfaceGone(t *testing.T) {
	requireVM(t)
	h := xdpCase
	host, _ := vethPair(t)
	dir := pinDir(t) + "/chain"
	c, err := dispatcher.Open(h.target(host), dir, dispatcher.WithLibxdpPins(libxdpDir))
	if err != nil {
		t.Fatal(err)
	}
	a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
	b := loadMember(t, h, "", 2, h.proceed, 20, h.mask(h.proceed))
	if err := c.Update(members(a, b), nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := netlink.LinkDel(mustLink(t, host.Index)); err != nil {
		t.Fatal(err)
	}
	c, err = dispatcher.Open(h.target(host), dir, dispatcher.WithLibxdpPins(libxdpDir))
	if err != nil {
		t.Fatalf("adopting the shared chain of a deleted interface: %v", err)
	}
	defer c.Close()
	for _, k := range []string{a.Key, b.Key} {
		if err := c.Update(nil, []string{k}); err != nil {
			t.Fatalf("removing a member of the chain of a deleted interface: %v", err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("chain pins left: %v", err)
	}
	if p := libxdpPins(host.Index); len(p) != 0 {
		t.Errorf("libxdp pins left: %v", p)
	}
}

// A shared chain's first change that fails (here: native XDP on lo, which
// has no native XDP) leaves no pin directory behind.
func TestSharedChainRefusedLeavesNothing(t *testing.T) {
	requireVM(t)
	h := xdpCase
	dir := pinDir(t) + "/chain"
	target := dispatcher.Target{Hook: dispatcher.XDP, Ifindex: mustIndex(t, "lo"), Interface: "lo", XDPMode: dispatcher.XDPModeNative}
	c, err := dispatcher.Open(target, dir, dispatcher.WithLibxdpPins(libxdpDir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
	err = c.Update(members(a), nil)
	if fault.Of(err) != fault.Precondition {
		t.Fatalf("native XDP on lo: %v, want Precondition", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the refused change left its pin directory (%v)", err)
	}
	if p := libxdpPins(target.Ifindex); len(p) != 0 {
		t.Errorf("libxdp pins left: %v", p)
	}
	if id := xdpProgID(t, target.Ifindex); id != 0 {
		t.Errorf("program %d attached to lo", id)
	}
}
