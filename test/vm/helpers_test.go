package vm

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/loader/dispatcher"
	"github.com/bpfmount/bpfmount/test/vm/progs"
)

// requireVM skips a test outside the VMs that `make test-vm` boots: the
// tests attach to interfaces and need a kernel that accepts freplace.
func requireVM(t testing.TB) {
	t.Helper()
	if os.Getenv("VMEXEC_KERNEL") == "" {
		reason := "the host kernel accepts freplace, but these tests create interfaces and belong in a throwaway VM"
		if err := dispatcher.Supported(); err != nil {
			reason = err.Error()
		}
		t.Skipf("skipping: VM kernel test (%s); run `make test-vm`, which boots Debian 6.1 and 6.12 kernels in qemu", reason)
	}
	if err := dispatcher.Supported(); err != nil {
		t.Fatalf("inside the VM the dispatchers must work: %v", err)
	}
}

// kernelAtLeast reports whether the running kernel is at least major.minor.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var ma, mi int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi)
	return ma > major || ma == major && mi >= minor
}

// pinDir returns a fresh directory on the VM's bpffs.
func pinDir(t testing.TB) string {
	t.Helper()
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	dir := filepath.Join("/sys/fs/bpf", name)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

var vethSeq atomic.Int32

// vethPair creates a veth pair: frames sent on peer arrive on host.
func vethPair(t testing.TB) (host, peer *net.Interface) {
	t.Helper()
	n := vethSeq.Add(1)
	a, b := fmt.Sprintf("vh%d", n), fmt.Sprintf("vp%d", n)
	// No IPv6 on the test interfaces: its neighbour discovery would add
	// frames of its own to the counts.
	for _, conf := range []string{"default", "all"} {
		os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/disable_ipv6", []byte("1"), 0)
	}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("creating veth %s/%s: %v", a, b, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(a); err == nil {
			netlink.LinkDel(l)
		}
	})
	for _, name := range []string{a, b} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if host, err = net.InterfaceByName(a); err != nil {
		t.Fatal(err)
	}
	if peer, err = net.InterfaceByName(b); err != nil {
		t.Fatal(err)
	}
	return host, peer
}

// hookCase describes a hook's verdicts so that one test body covers XDP
// and tc.
type hookCase struct {
	name      string
	hook      dispatcher.Hook
	direction string
	prog      string
	proceed   int32 // the verdict members return to go on: XDP_PASS, TC_ACT_PIPE
	stop      int32 // a verdict that stops the chain: XDP_DROP, TC_ACT_SHOT
	final     int32 // what the dispatcher returns when all proceed: XDP_PASS, TC_ACT_OK
	dispRet   int32 // dispatcher_return
}

const (
	xdpDrop = 1
	xdpPass = 2
	xdpTX   = 3
	tcOK    = 0
	tcShot  = 2
	tcPipe  = 3
)

var (
	xdpCase       = hookCase{name: "xdp", hook: dispatcher.XDP, prog: progs.MembersProgXdpMember, proceed: xdpPass, stop: xdpDrop, final: xdpPass, dispRet: dispatcher.XDPDispatcherReturn}
	tcIngressCase = hookCase{name: "tc-ingress", hook: dispatcher.TC, direction: dispatcher.Ingress, prog: progs.MembersProgTcMember, proceed: tcPipe, stop: tcShot, final: tcOK, dispRet: dispatcher.TCDispatcherReturn}
	tcEgressCase  = hookCase{name: "tc-egress", hook: dispatcher.TC, direction: dispatcher.Egress, prog: progs.MembersProgTcMember, proceed: tcPipe, stop: tcShot, final: tcOK, dispRet: dispatcher.TCDispatcherReturn}
)

// mask returns the chain-call mask that proceeds on the given verdicts.
func (h hookCase) mask(verdicts ...int32) uint32 {
	var m uint32
	for _, v := range verdicts {
		if h.hook == dispatcher.TC {
			v++
		}
		m |= 1 << uint(v)
	}
	return m
}

func (h hookCase) target(ifc *net.Interface) dispatcher.Target {
	return dispatcher.Target{Hook: h.hook, Ifindex: ifc.Index, Interface: ifc.Name, Direction: h.direction, XDPMode: dispatcher.XDPModeAuto}
}

// member is a loaded test member.
type member struct {
	dispatcher.Member
	ext *dispatcher.Extension
	id  uint8
}

// positions returns the member's positions map: how many frames it saw
// as the n-th member.
func (m *member) positions(t testing.TB) []uint64 {
	t.Helper()
	out := make([]uint64, 16)
	for i := range out {
		if err := m.ext.Maps[progs.MembersMapPositions].Lookup(uint32(i), &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// runs sums the member's positions: how many frames it saw.
func (m *member) runs(t testing.TB) uint64 {
	var n uint64
	for _, v := range m.positions(t) {
		n += v
	}
	return n
}

// loadMember loads a copy of the test member program with its own id,
// verdict, priority and chain-call mask.
func loadMember(t testing.TB, h hookCase, prog string, id uint8, verdict int32, prio int, mask uint32) *member {
	t.Helper()
	spec, err := progs.LoadMembers()
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables[progs.MembersVarMemberId].Set(uint32(id)); err != nil {
		t.Fatal(err)
	}
	if err := spec.Variables[progs.MembersVarVerdict].Set(verdict); err != nil {
		t.Fatal(err)
	}
	if prog == "" {
		prog = h.prog
	}
	ext, err := dispatcher.LoadMember(h.hook, spec, prog, nil)
	if err != nil {
		t.Fatalf("loading member %d: %v", id, err)
	}
	t.Cleanup(func() { ext.Close() })
	return &member{
		Member: dispatcher.Member{
			Key: fmt.Sprintf("m%02d", id), Name: prog, Program: ext.Program,
			Priority: prio, ProceedOn: mask, Frags: ext.Frags, Created: time.Now(),
		},
		ext: ext, id: id,
	}
}

func members(ms ...*member) []dispatcher.Member {
	out := make([]dispatcher.Member, len(ms))
	for i, m := range ms {
		out[i] = m.Member
	}
	return out
}

// frame returns a 64-byte Ethernet frame with an empty trail.
func frame(dst, src net.HardwareAddr) []byte {
	f := make([]byte, 64)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], 0x88b5) // local experimental ethertype
	return f
}

// testRun runs the chain's dispatcher on a fresh frame with
// BPF_PROG_TEST_RUN and returns its verdict and the ids on the trail.
func testRun(t testing.TB, c *dispatcher.Chain) (int32, []uint8) {
	t.Helper()
	in := frame(net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2})
	out := make([]byte, len(in)+256)
	d := c.Dispatcher()
	if d == nil {
		t.Fatal("the chain has no dispatcher")
	}
	ret, err := d.Run(&ebpf.RunOptions{Data: in, DataOut: out})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	n := int(out[14])
	if n > 12 {
		t.Fatalf("trail count %d", n)
	}
	return int32(ret), append([]uint8(nil), out[15:15+n]...)
}

// sender sends frames from an interface with an AF_PACKET socket.
type sender struct {
	fd    int
	frame []byte
	sa    unix.SockaddrLinklayer
	sent  atomic.Uint64
	stop  chan struct{}
	wg    sync.WaitGroup
}

func newSender(t testing.TB, from, to *net.Interface) *sender {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		t.Fatalf("AF_PACKET socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	s := &sender{fd: fd, frame: frame(to.HardwareAddr, from.HardwareAddr), stop: make(chan struct{})}
	s.sa = unix.SockaddrLinklayer{Ifindex: from.Index, Halen: 6}
	copy(s.sa.Addr[:], to.HardwareAddr)
	return s
}

// send sends n frames.
func (s *sender) send(t testing.TB, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		// A frame that tc egress drops fails with ENOBUFS: it was sent.
		if err := unix.Sendto(s.fd, s.frame, 0, &s.sa); err != nil && err != unix.ENOBUFS {
			t.Fatalf("sending frame %d: %v", i, err)
		}
		s.sent.Add(1)
	}
}

// start sends frames continuously until halt.
func (s *sender) start(t testing.TB) { s.startOn(t, -1) }

// startOn is start on a thread bound to one CPU (any CPU when cpu < 0):
// the frames' receive path runs there too (veth hands them over on the
// sending CPU).
func (s *sender) startOn(t testing.TB, cpu int) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if cpu >= 0 {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := bindThread(cpu); err != nil {
				t.Errorf("binding the sender to CPU %d: %v", cpu, err)
				return
			}
		}
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			if err := unix.Sendto(s.fd, s.frame, 0, &s.sa); err != nil {
				// ENOBUFS: a full veth queue (native XDP) dropped the
				// frame, or tc egress did; either way, go on.
				if err == unix.EAGAIN || err == unix.ENOBUFS {
					time.Sleep(time.Millisecond)
					continue
				}
				t.Errorf("sending: %v", err)
				return
			}
			s.sent.Add(1)
		}
	}()
}

func (s *sender) halt() uint64 {
	close(s.stop)
	s.wg.Wait()
	time.Sleep(200 * time.Millisecond) // let the receive path drain
	return s.sent.Load()
}

// bindThread binds the calling OS thread (locked by the caller) to cpu.
func bindThread(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(0, &set)
}

// path is the way frames take to meet h's dispatcher on host: into host
// from its peer (ingress), out of host to its peer (egress).
func (h hookCase) path(host, peer *net.Interface) (from, to *net.Interface) {
	if h.direction == dispatcher.Egress {
		return host, peer
	}
	return peer, host
}

// openOnVeth opens h's dispatcher on the host side of a new veth pair, and
// returns the way frames take to meet it. The caller empties the chain
// (setChain) when done.
func openOnVeth(t testing.TB, h hookCase) (c *dispatcher.Chain, from, to *net.Interface) {
	t.Helper()
	host, peer := vethPair(t)
	c, err := dispatcher.Open(h.target(host), pinDir(t))
	if err != nil {
		t.Fatal(err)
	}
	from, to = h.path(host, peer)
	return c, from, to
}

// runThree loads three members of h (ids 1, 2, 3 at priorities 10, 20,
// 30, each proceeding) and runs them in c.
func runThree(t testing.TB, h hookCase, c *dispatcher.Chain) (first, middle, last *member) {
	t.Helper()
	first = loadMember(t, h, "", 1, h.proceed, 10, h.mask(h.proceed))
	middle = loadMember(t, h, "", 2, h.proceed, 20, h.mask(h.proceed))
	last = loadMember(t, h, "", 3, h.proceed, 30, h.mask(h.proceed))
	if err := c.Update(members(first, middle, last), nil); err != nil {
		t.Fatal(err)
	}
	return first, middle, last
}

// duringTraffic starts s, runs changes while it sends and returns the
// frames sent: with two CPUs or more, frames on CPU 0 and changes on
// CPU 1, so frames in flight meet a change on the other CPU.
func duringTraffic(t testing.TB, cpus int, s *sender, changes func()) uint64 {
	t.Helper()
	sendCPU, swapCPU := -1, -1
	if cpus >= 2 {
		sendCPU, swapCPU = 0, 1
	}
	s.startOn(t, sendCPU)
	if swapCPU >= 0 {
		onCPU(t, swapCPU, changes)
	} else {
		changes()
	}
	return s.halt()
}

// toggleMember removes m from c and adds it back, rounds times, 20ms
// apart; false (the error reported) when a change failed.
func toggleMember(t testing.TB, c *dispatcher.Chain, m *member, rounds int) bool {
	for i := 0; i < rounds; i++ {
		if err := c.Update(nil, []string{m.Key}); err != nil {
			t.Error(err)
			return false
		}
		time.Sleep(20 * time.Millisecond)
		if err := c.Update([]dispatcher.Member{m.Member}, nil); err != nil {
			t.Error(err)
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// onCPU runs fn on a thread bound to cpu, then discards the thread.
func onCPU(t testing.TB, cpu int, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := bindThread(cpu); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("binding to CPU %d: %v", cpu, err)
	}
}

// wantCPUs fails the test when VMTEST_CPUS asks for more CPUs than the VM
// has (run.sh boots the two-CPU run with -smp 2), and returns the count.
func wantCPUs(t testing.TB) int {
	t.Helper()
	n := runtime.NumCPU()
	if w := os.Getenv("VMTEST_CPUS"); w != "" && w != strconv.Itoa(n) {
		t.Fatalf("VMTEST_CPUS=%s but the VM has %d CPUs", w, n)
	}
	return n
}

func loadPinnedMap(p string) (*ebpf.Map, error) { return ebpf.LoadPinnedMap(p, nil) }

func mustLink(t testing.TB, ifindex int) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func parentOf(h hookCase) uint32 {
	if h.direction == dispatcher.Egress {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

// setChain replaces a chain's members with ms in one revision; no members
// detach the dispatcher and remove its pins.
func setChain(c *dispatcher.Chain, ms ...dispatcher.Member) error {
	var keys []string
	for _, m := range c.Members() {
		keys = append(keys, m.Key)
	}
	return c.Update(ms, keys)
}
