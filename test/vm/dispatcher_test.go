package vm

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
	"github.com/bpfmount/bpfmount/test/vm/progs"
)

var hookCases = []hookCase{xdpCase, tcIngressCase, tcEgressCase}

func forEachHook(t *testing.T, f func(t *testing.T, h hookCase)) {
	for _, h := range hookCases {
		t.Run(h.name, func(t *testing.T) { f(t, h) })
	}
}

func TestSupported(t *testing.T) {
	requireVM(t)
	var u unix.Utsname
	unix.Uname(&u)
	t.Logf("kernel %s: dispatchers supported", unix.ByteSliceToString(u.Release[:]))
}

// Three members given out of order run by priority; a verdict outside a
// member's proceedOn stops the chain and is the dispatcher's verdict; when
// every member proceeds the dispatcher returns XDP_PASS (tc: TC_ACT_OK).
// Proven with BPF_PROG_TEST_RUN on the live dispatcher.
func TestChainOrderAndVerdicts(t *testing.T) {
	requireVM(t)
	forEachHook(t, func(t *testing.T, h hookCase) {
		host, _ := vethPair(t)
		c, err := dispatcher.Open(h.target(host), pinDir(t))
		if err != nil {
			t.Fatal(err)
		}
		defer setChain(c)
		type spec struct {
			id      uint8
			verdict int32
			prio    int
			mask    uint32
		}
		cases := []struct {
			name    string
			members []spec // ids 1, 2, 3 run in that order (priorities 10, 20, 30)
			ret     int32
			trail   []uint8
		}{
			{"all proceed", []spec{{3, h.proceed, 30, h.mask(h.proceed)}, {1, h.proceed, 10, h.mask(h.proceed)}, {2, h.proceed, 20, h.mask(h.proceed)}}, h.final, []uint8{1, 2, 3}},
			{"middle stops", []spec{{3, h.proceed, 30, h.mask(h.proceed)}, {1, h.proceed, 10, h.mask(h.proceed)}, {2, h.stop, 20, h.mask(h.proceed)}}, h.stop, []uint8{1, 2}},
			{"middle proceeds on its stop verdict", []spec{{3, h.proceed, 30, h.mask(h.proceed)}, {1, h.proceed, 10, h.mask(h.proceed)}, {2, h.stop, 20, h.mask(h.proceed, h.stop)}}, h.final, []uint8{1, 2, 3}},
			{"first stops", []spec{{3, h.proceed, 30, h.mask(h.proceed)}, {1, h.stop, 10, h.mask(h.proceed)}, {2, h.proceed, 20, h.mask(h.proceed)}}, h.stop, []uint8{1}},
			{"last stops", []spec{{3, h.stop, 30, h.mask(h.proceed)}, {1, h.proceed, 10, h.mask(h.proceed)}, {2, h.proceed, 20, h.mask(h.proceed)}}, h.stop, []uint8{1, 2, 3}},
			{"dispatcher_return proceeds", []spec{{3, h.proceed, 30, h.mask(h.proceed)}, {1, h.dispRet, 10, h.mask(h.dispRet)}, {2, h.proceed, 20, h.mask(h.proceed)}}, h.final, []uint8{1, 2, 3}},
			{"dispatcher_return without it stops", []spec{{3, h.proceed, 30, h.mask(h.proceed)}, {1, h.dispRet, 10, h.mask(h.proceed)}, {2, h.proceed, 20, h.mask(h.proceed)}}, h.dispRet, []uint8{1}},
		}
		for _, tc := range cases {
			var ms []*member
			for _, s := range tc.members {
				ms = append(ms, loadMember(t, h, "", s.id, s.verdict, s.prio, s.mask))
			}
			if err := setChain(c, members(ms...)...); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			ret, trail := testRun(t, c)
			if ret != tc.ret || !slices.Equal(trail, tc.trail) {
				t.Errorf("%s: verdict %d, trail %v; want %d, %v", tc.name, ret, trail, tc.ret, tc.trail)
			}
		}
		// The configuration is readable in the published format.
		conf, err := dispatcher.ReadConfig(h.hook, c.Dispatcher())
		if err != nil {
			t.Fatal(err)
		}
		want := 2
		if h.hook == dispatcher.TC {
			want = 1
		}
		if conf.Version != want || len(conf.Slots) != 3 || conf.Slots[0].RunPrio != 10 || conf.Slots[2].RunPrio != 30 || conf.Slots[1].ChainCallActions != h.mask(h.proceed) {
			t.Errorf("configuration %+v", conf)
		}
		if got := c.Revision(); got != uint64(len(cases)) {
			t.Errorf("revision %d after %d sets", got, len(cases))
		}
	})
}

// Real frames over a veth run the chain in order, and a stop verdict keeps
// the later members from seeing them.
func TestChainTraffic(t *testing.T) {
	requireVM(t)
	forEachHook(t, func(t *testing.T, h hookCase) {
		c, from, to := openOnVeth(t, h)
		defer setChain(c)
		a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
		b := loadMember(t, h, "", 2, h.proceed, 20, h.mask(h.proceed))
		d := loadMember(t, h, "", 3, h.proceed, 30, h.mask(h.proceed))
		if err := setChain(c, members(d, b, a)...); err != nil {
			t.Fatal(err)
		}
		if h.hook == dispatcher.XDP {
			t.Logf("XDP attached in %s mode", c.Mode())
		}
		s := newSender(t, from, to)
		const n = 100
		s.send(t, n)
		time.Sleep(200 * time.Millisecond)
		for k, m := range []*member{a, b, d} {
			if p := m.positions(t); p[k] != n || m.runs(t) != n {
				t.Errorf("member %d: positions %v; want %d frames at position %d", m.id, p[:4], n, k)
			}
		}
		// The middle member drops: the last one sees nothing more.
		b2 := loadMember(t, h, "", 2, h.stop, 20, h.mask(h.proceed))
		if err := c.Update([]dispatcher.Member{{Key: b.Key, Name: b.Name, Program: b2.Program, Priority: 20, ProceedOn: h.mask(h.proceed)}}, nil); err != nil {
			t.Fatal(err)
		}
		s.send(t, n)
		time.Sleep(200 * time.Millisecond)
		if got := a.runs(t); got != 2*n {
			t.Errorf("first member saw %d frames, want %d", got, 2*n)
		}
		if got := b2.runs(t); got != n {
			t.Errorf("dropping member saw %d frames, want %d", got, n)
		}
		if got := d.runs(t); got != n {
			t.Errorf("last member saw %d frames after the middle one dropped, want %d (only those before)", got, n)
		}
	})
}

// Removing the middle member (and adding it back, again and again) while
// frames flow: every frame sent meets the whole chain of one revision or
// the next, so the first and the last member each see exactly the frames
// sent. With two CPUs (run.sh's -smp 2 run) the frames run on CPU 0 and
// the swaps on CPU 1, so frames in flight meet a swap on the other CPU.
func TestRemoveMiddleUnderTraffic(t *testing.T) {
	requireVM(t)
	cpus := wantCPUs(t)
	forEachHook(t, func(t *testing.T, h hookCase) {
		c, from, to := openOnVeth(t, h)
		defer setChain(c)
		first, middle, last := runThree(t, h, c)
		const rounds = 10
		sent := duringTraffic(t, cpus, newSender(t, from, to), func() {
			time.Sleep(50 * time.Millisecond)
			if !toggleMember(t, c, middle, rounds) {
				return
			}
			if err := c.Update(nil, []string{middle.Key}); err != nil {
				t.Error(err)
			}
			time.Sleep(50 * time.Millisecond)
		})
		f, m, l := first.runs(t), middle.runs(t), last.runs(t)
		t.Logf("%d CPUs: %d frames sent; first saw %d, middle %d, last %d; %d revisions", cpus, sent, f, m, l, c.Revision())
		if f == 0 || m == 0 || m >= f {
			t.Errorf("traffic did not flow through both chain shapes: first %d, middle %d", f, m)
		}
		if f != sent || l != sent {
			t.Errorf("%d frames sent during the revisions; the first member saw %d and the last %d: a frame skipped the chain or met a partial one", sent, f, l)
		}
		lp := last.positions(t)
		if lp[1]+lp[2] != l || lp[1] == 0 || lp[2] == 0 {
			t.Errorf("last member positions %v: want frames at positions 1 and 2 only", lp[:4])
		}
		if got := c.Revision(); got != 2*rounds+2 {
			t.Errorf("revision %d, want %d", got, 2*rounds+2)
		}
	})
}

// Ten members fill the slots and all run; the eleventh fails with
// fault.Exhausted naming the interface and the holders, and the chain is
// unchanged.
func TestSlotLimit(t *testing.T) {
	requireVM(t)
	forEachHook(t, func(t *testing.T, h hookCase) {
		host, _ := vethPair(t)
		c, err := dispatcher.Open(h.target(host), pinDir(t))
		if err != nil {
			t.Fatal(err)
		}
		defer setChain(c)
		var ms []*member
		for i := 1; i <= dispatcher.Slots; i++ {
			ms = append(ms, loadMember(t, h, "", uint8(i), h.proceed, i, h.mask(h.proceed)))
		}
		if err := setChain(c, members(ms...)...); err != nil {
			t.Fatal(err)
		}
		ret, trail := testRun(t, c)
		if ret != h.final || len(trail) != dispatcher.Slots || trail[0] != 1 || trail[9] != 10 {
			t.Fatalf("ten members: verdict %d, trail %v", ret, trail)
		}
		rev := c.Revision()
		extra := loadMember(t, h, "", 11, h.proceed, 5, h.mask(h.proceed))
		err = c.Update([]dispatcher.Member{extra.Member}, nil)
		if fault.Of(err) != fault.Exhausted {
			t.Fatalf("eleventh member: %v (kind %v), want an Exhausted error", err, fault.Of(err))
		}
		var ee *dispatcher.ExhaustedError
		if !errors.As(err, &ee) || len(ee.Holders) != dispatcher.Slots || !slices.Equal(ee.Refused, []string{extra.Key}) {
			t.Fatalf("error %v does not carry the holders and the refused member: %+v", err, ee)
		}
		if want := fmt.Sprintf("%q", host.Name); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name interface %s", err, want)
		}
		t.Logf("eleventh member: %v", err)
		if c.Revision() != rev || len(c.Members()) != dispatcher.Slots {
			t.Errorf("a refused change touched the chain")
		}
		if ret, trail := testRun(t, c); ret != h.final || len(trail) != dispatcher.Slots {
			t.Errorf("after the refusal: verdict %d, trail %v", ret, trail)
		}
	})
}

// A daemon restart: every descriptor is closed (only the pins remain), the
// chain keeps running, and Open adopts it with its members and order keys.
func TestRestartKeepsChain(t *testing.T) {
	requireVM(t)
	forEachHook(t, func(t *testing.T, h hookCase) {
		host, peer := vethPair(t)
		root := pinDir(t)
		dir := root + "/chain"
		from, to := h.path(host, peer)
		c, err := dispatcher.Open(h.target(host), dir)
		if err != nil {
			t.Fatal(err)
		}
		a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
		b := loadMember(t, h, "", 2, h.proceed, 10, h.mask(h.proceed, h.stop))
		b.Name = "zz_" + b.Name // same priority: the name orders them
		if err := setChain(c, members(b, a)...); err != nil {
			t.Fatal(err)
		}
		// Keep the maps through their pins, as the loader does.
		for _, m := range []*member{a, b} {
			if err := m.ext.Maps[progs.MembersMapPositions].Pin(fmt.Sprintf("%s/%s-positions", root, m.Key)); err != nil {
				t.Fatal(err)
			}
		}
		rev := c.Revision()
		c.Close()
		a.ext.Close()
		b.ext.Close()

		s := newSender(t, from, to)
		s.send(t, 50)
		time.Sleep(200 * time.Millisecond)

		c2, err := dispatcher.Open(h.target(host), dir)
		if err != nil {
			t.Fatal(err)
		}
		defer setChain(c2)
		got := c2.Members()
		if len(got) != 2 || got[0].Key != a.Key || got[1].Key != b.Key || got[1].Name != b.Name ||
			got[0].Priority != 10 || got[1].ProceedOn != h.mask(h.proceed, h.stop) || !got[0].Created.Equal(a.Created) {
			t.Fatalf("adopted members %+v", got)
		}
		if c2.Revision() != rev {
			t.Errorf("adopted revision %d, want %d", c2.Revision(), rev)
		}
		if h.hook == dispatcher.XDP && c2.Mode() == "" {
			t.Errorf("adopted XDP chain reports no attach mode")
		}
		for k, m := range []*member{a, b} {
			pm, err := loadPinnedMap(fmt.Sprintf("%s/%s-positions", root, m.Key))
			if err != nil {
				t.Fatal(err)
			}
			var v uint64
			pm.Lookup(uint32(k), &v)
			pm.Close()
			if v != 50 {
				t.Errorf("member %s saw %d frames after the restart, want 50 at position %d", m.Key, v, k)
			}
		}
		// The adopted chain changes like any other: drop a; b moves up.
		if err := c2.Update(nil, []string{a.Key}); err != nil {
			t.Fatal(err)
		}
		if ret, trail := testRun(t, c2); ret != h.final || !slices.Equal(trail, []uint8{2}) {
			t.Errorf("after removing the first member: verdict %d, trail %v", ret, trail)
		}
		if err := setChain(c2); err != nil {
			t.Fatal(err)
		}
		if ents, err := os.ReadDir(dir); !os.IsNotExist(err) {
			t.Errorf("pins left after the chain emptied: %v %v", ents, err)
		}
		if h.hook == dispatcher.XDP {
			l, _ := netlink.LinkByIndex(host.Index)
			if l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached {
				t.Errorf("XDP program still attached after the chain emptied")
			}
		} else {
			fs, _ := netlink.FilterList(mustLink(t, host.Index), parentOf(h))
			if len(fs) != 0 {
				t.Errorf("tc filters left after the chain emptied: %v", fs)
			}
		}
	})
}

// Concurrent updates coalesce into fewer revisions, and each caller gets
// its own outcome: the ones that do not fit fail with Exhausted.
func TestConcurrentUpdatesCoalesce(t *testing.T) {
	requireVM(t)
	h := xdpCase
	host, _ := vethPair(t)
	c, err := dispatcher.Open(h.target(host), pinDir(t))
	if err != nil {
		t.Fatal(err)
	}
	defer setChain(c)
	const n = 12
	var ms []*member
	for i := 1; i <= n; i++ {
		ms = append(ms, loadMember(t, h, "", uint8(i), h.proceed, 100+i, h.mask(h.proceed)))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = c.Update([]dispatcher.Member{m.Member}, nil)
		}()
	}
	close(start)
	wg.Wait()
	var ok, exhausted int
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case fault.Of(err) == fault.Exhausted:
			exhausted++
		default:
			t.Errorf("update %d: %v", i, err)
		}
	}
	t.Logf("%d concurrent updates: %d applied, %d exhausted, %d revisions built", n, ok, exhausted, c.Builds())
	if ok != dispatcher.Slots || exhausted != n-dispatcher.Slots {
		t.Errorf("%d applied and %d exhausted; want %d and %d", ok, exhausted, dispatcher.Slots, n-dispatcher.Slots)
	}
	if c.Builds() >= uint64(ok) {
		t.Errorf("%d revisions for %d concurrent updates: nothing coalesced", c.Builds(), ok)
	}
	if ret, trail := testRun(t, c); ret != h.final || len(trail) != dispatcher.Slots {
		t.Errorf("verdict %d, trail %v", ret, trail)
	}
}

// The XDP dispatcher declares frags support only when every member does.
func TestXDPFrags(t *testing.T) {
	requireVM(t)
	h := xdpCase
	host, _ := vethPair(t)
	c, err := dispatcher.Open(h.target(host), pinDir(t))
	if err != nil {
		t.Fatal(err)
	}
	defer setChain(c)
	fa := loadMember(t, h, progs.MembersProgXdpMemberFrags, 1, h.proceed, 10, h.mask(h.proceed))
	fb := loadMember(t, h, progs.MembersProgXdpMemberFrags, 2, h.proceed, 20, h.mask(h.proceed))
	plain := loadMember(t, h, "", 3, h.proceed, 30, h.mask(h.proceed))
	if !fa.Frags || plain.Frags {
		t.Fatalf("LoadMember frags: %v %v", fa.Frags, plain.Frags)
	}
	check := func(want bool, wantTrail []uint8, ms ...*member) {
		t.Helper()
		if err := setChain(c, members(ms...)...); err != nil {
			t.Fatal(err)
		}
		conf, err := dispatcher.ReadConfig(h.hook, c.Dispatcher())
		if err != nil {
			t.Fatal(err)
		}
		if conf.Frags != want {
			t.Errorf("dispatcher frags %v, want %v", conf.Frags, want)
		}
		for i, m := range ms {
			if got := conf.Slots[i].ProgramFlags&unix.BPF_F_XDP_HAS_FRAGS != 0; got != m.Frags {
				t.Errorf("slot %d program flags %#x", i, conf.Slots[i].ProgramFlags)
			}
		}
		if ret, trail := testRun(t, c); ret != h.final || !slices.Equal(trail, wantTrail) {
			t.Errorf("verdict %d, trail %v", ret, trail)
		}
	}
	check(true, []uint8{1, 2}, fa, fb)
	check(false, []uint8{1, 2, 3}, fa, fb, plain)
	check(true, []uint8{1}, fa)
}

// A revision left behind by a crash (built and pinned, never swapped in)
// is removed when the chain is adopted, and revision numbers go on from
// the highest one seen.
func TestOpenRemovesStaleRevisions(t *testing.T) {
	requireVM(t)
	forEachHook(t, func(t *testing.T, h hookCase) {
		host, _ := vethPair(t)
		other, _ := vethPair(t)
		root := pinDir(t)
		dir := root + "/chain"
		c, err := dispatcher.Open(h.target(host), dir)
		if err != nil {
			t.Fatal(err)
		}
		a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
		if err := setChain(c, members(a)...); err != nil {
			t.Fatal(err)
		}
		// A dispatcher that is not the live one, pinned as revision 9.
		o, err := dispatcher.Open(h.target(other), root+"/other")
		if err != nil {
			t.Fatal(err)
		}
		defer setChain(o)
		if err := setChain(o, members(a)...); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir+"/rev-9", 0o700); err != nil {
			t.Fatal(err)
		}
		if err := o.Dispatcher().Pin(dir + "/rev-9/dispatcher"); err != nil {
			t.Fatal(err)
		}
		c.Close()

		c2, err := dispatcher.Open(h.target(host), dir)
		if err != nil {
			t.Fatal(err)
		}
		defer setChain(c2)
		if _, err := os.Stat(dir + "/rev-9"); !os.IsNotExist(err) {
			t.Errorf("stale revision 9 still pinned: %v", err)
		}
		if c2.Revision() != 1 || len(c2.Members()) != 1 {
			t.Fatalf("adopted revision %d with %d members, want revision 1 with 1", c2.Revision(), len(c2.Members()))
		}
		b := loadMember(t, h, "", 2, h.proceed, 20, h.mask(h.proceed))
		if err := c2.Update([]dispatcher.Member{b.Member}, nil); err != nil {
			t.Fatal(err)
		}
		if c2.Revision() != 10 {
			t.Errorf("next revision %d, want 10", c2.Revision())
		}
		if ret, trail := testRun(t, c2); ret != h.final || !slices.Equal(trail, []uint8{1, 2}) {
			t.Errorf("verdict %d, trail %v", ret, trail)
		}
	})
}

// When the interface goes away, the chain's pins can still be adopted and
// removed.
func TestInterfaceGone(t *testing.T) {
	requireVM(t)
	forEachHook(t, func(t *testing.T, h hookCase) {
		host, _ := vethPair(t)
		dir := pinDir(t) + "/chain"
		c, err := dispatcher.Open(h.target(host), dir)
		if err != nil {
			t.Fatal(err)
		}
		a := loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
		if err := setChain(c, members(a)...); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if err := netlink.LinkDel(mustLink(t, host.Index)); err != nil {
			t.Fatal(err)
		}
		c2, err := dispatcher.Open(h.target(host), dir)
		if err != nil {
			t.Fatalf("adopting the chain of a deleted interface: %v", err)
		}
		if err := setChain(c2); err != nil {
			t.Fatalf("emptying the chain of a deleted interface: %v", err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("pins left: %v", err)
		}
	})
}
