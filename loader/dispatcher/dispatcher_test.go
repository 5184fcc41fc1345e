package dispatcher

// These tests need no kernel support: they check ordering, the
// configuration format, pin names and the slot limit. The kernel tests are
// in test/vm (make test-vm).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

func TestCompareOrdersByPriorityNameCreatedKey(t *testing.T) {
	t0 := time.Unix(1000, 0)
	in := []Member{
		{Key: "e", Name: "b", Priority: 50, Created: t0},
		{Key: "d", Name: "a", Priority: 50, Created: t0.Add(time.Second)},
		{Key: "c", Name: "a", Priority: 50, Created: t0},
		{Key: "b", Name: "z", Priority: 10, Created: t0},
		{Key: "a", Name: "a", Priority: 50, Created: t0},
	}
	slices.SortFunc(in, Compare)
	var got []string
	for _, m := range in {
		got = append(got, m.Key)
	}
	if want := []string{"b", "a", "c", "d", "e"}; !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}

func TestXDPConfigFollowsLibxdpV2(t *testing.T) {
	ms := []Member{
		{Priority: 10, ProceedOn: 1<<2 | 1<<31, Frags: true},
		{Priority: 20, ProceedOn: 1 << 2, Frags: true},
	}
	v, frags := configFor(XDP, ms)
	if !frags {
		t.Errorf("all members support frags, the dispatcher should too")
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, v); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	// libxdp v2: magic, version, num_progs_enabled, is_xdp_frags, then
	// three arrays of ten u32.
	if len(b) != 4+3*4*Slots {
		t.Fatalf("configuration is %d bytes", len(b))
	}
	if b[0] != 236 || b[1] != 2 || b[2] != 2 || b[3] != 1 {
		t.Errorf("header % x", b[:4])
	}
	if got := binary.NativeEndian.Uint32(b[4:]); got != 1<<2|1<<31 {
		t.Errorf("chain_call_actions[0] %#x", got)
	}
	if got := binary.NativeEndian.Uint32(b[4+4*Slots+4:]); got != 20 {
		t.Errorf("run_prios[1] %d", got)
	}
	if got := binary.NativeEndian.Uint32(b[4+8*Slots:]); got != unix.BPF_F_XDP_HAS_FRAGS {
		t.Errorf("program_flags[0] %#x", got)
	}
	conf, err := DecodeConfig(XDP, b)
	if err != nil {
		t.Fatal(err)
	}
	if conf.Version != 2 || !conf.Frags || len(conf.Slots) != 2 || conf.Slots[1].RunPrio != 20 {
		t.Errorf("decoded %+v", conf)
	}
	// One member without frags: no frags for the dispatcher.
	ms[1].Frags = false
	if _, frags := configFor(XDP, ms); frags {
		t.Errorf("a member without frags support must turn frags off")
	}
	if _, err := DecodeConfig(XDP, make([]byte, len(b))); err == nil {
		t.Errorf("a zero configuration decoded without its magic")
	}
}

func TestTCConfigFollowsBpfmanV1(t *testing.T) {
	v, frags := configFor(TC, []Member{{Priority: 7, ProceedOn: 1 << 4}})
	if frags {
		t.Errorf("tc has no frags")
	}
	var buf bytes.Buffer
	binary.Write(&buf, binary.NativeEndian, v)
	b := buf.Bytes()
	if len(b) != 4+2*4*Slots || b[0] != 1 {
		t.Fatalf("configuration % x", b)
	}
	conf, err := DecodeConfig(TC, b)
	if err != nil {
		t.Fatal(err)
	}
	if conf.Version != 1 || len(conf.Slots) != 1 || conf.Slots[0].ChainCallActions != 1<<4 || conf.Slots[0].RunPrio != 7 {
		t.Errorf("decoded %+v", conf)
	}
}

// The objects hold what freplace needs: ten global functions prog0..prog9
// taking the hook's context.
func TestDispatcherObjectsHaveSlotStubs(t *testing.T) {
	for _, tc := range []struct {
		h   Hook
		ctx string
	}{{XDP, "xdp_md"}, {TC, "__sk_buff"}} {
		cs, prog, err := dispatcherSpec(tc.h, make([]Member, 3))
		if err != nil {
			t.Fatal(err)
		}
		if cs.Programs[prog] == nil {
			t.Fatalf("%s: no program %q", tc.h, prog)
		}
		for i := 0; i < Slots; i++ {
			var fn *btf.Func
			if err := cs.Types.TypeByName(slotFunc(i), &fn); err != nil {
				t.Fatalf("%s: %v", tc.h, err)
			}
			if fn.Linkage != btf.GlobalFunc {
				t.Errorf("%s: %s has linkage %v, freplace needs a global function", tc.h, fn.Name, fn.Linkage)
			}
			proto := fn.Type.(*btf.FuncProto)
			ptr, ok := proto.Params[0].Type.(*btf.Pointer)
			if !ok || len(proto.Params) != 1 || ptr.Target.TypeName() != tc.ctx {
				t.Errorf("%s: %s takes %v, want struct %s *", tc.h, fn.Name, proto.Params, tc.ctx)
			}
		}
	}
	cs, prog, _ := dispatcherSpec(XDP, []Member{{Frags: true}})
	if cs.Programs[prog].Flags&unix.BPF_F_XDP_HAS_FRAGS == 0 {
		t.Errorf("a dispatcher of frags members must load with BPF_F_XDP_HAS_FRAGS")
	}
}

func TestSlotPinNameRoundTrip(t *testing.T) {
	created := time.Unix(1700000000, 123456789)
	m := Member{Key: "3f2a-9c", Name: "xdp_stats_v2", Created: created}
	name := slotPinName(7, m)
	if strings.Contains(name, ".") || strings.Contains(name, "/") {
		t.Fatalf("pin name %q has a character bpffs refuses", name)
	}
	i, got, ok := parseSlotPin(name)
	if !ok || i != 7 || got.Key != m.Key || got.Name != m.Name || !got.Created.Equal(created) {
		t.Errorf("parsed %q as %d %+v %v", name, i, got, ok)
	}
	if _, _, ok := parseSlotPin("dispatcher"); ok {
		t.Errorf("parsed a non-slot pin")
	}
}

func TestMerge(t *testing.T) {
	cur := []Member{{Key: "a"}, {Key: "b", Priority: 1}, {Key: "c"}}
	got, changed := merge(cur, []Member{{Key: "b", Priority: 2}, {Key: "d"}}, []string{"c", "x"})
	var keys []string
	for _, m := range got {
		keys = append(keys, fmt.Sprintf("%s%d", m.Key, m.Priority))
	}
	if !changed || !slices.Equal(keys, []string{"a0", "b2", "d0"}) {
		t.Errorf("merge: %v %v", keys, changed)
	}
	if _, changed := merge(cur, nil, []string{"x"}); changed {
		t.Errorf("removing an absent key changed the set")
	}
}

func TestEleventhMemberIsExhausted(t *testing.T) {
	c := &Chain{target: Target{Hook: XDP, Ifindex: 3, Interface: "eth0"}}
	var ms []Member
	for i := 0; i <= Slots; i++ {
		ms = append(ms, Member{Key: fmt.Sprintf("k%02d", i), Priority: i})
	}
	err := c.check(ms)
	if fault.Of(err) != fault.Exhausted {
		t.Fatalf("got %v, want an Exhausted fault", err)
	}
	var ee *ExhaustedError
	if !errors.As(err, &ee) || len(ee.Holders) != Slots || !slices.Equal(ee.Refused, []string{"k10"}) {
		t.Errorf("error carries %+v", ee)
	}
	if !strings.Contains(err.Error(), `"eth0"`) {
		t.Errorf("message %q does not name the interface", err)
	}
	if err := c.check(ms[:Slots]); fault.Of(err) == fault.Exhausted {
		t.Errorf("ten members are not too many: %v", err)
	}
}

func TestTargetValidation(t *testing.T) {
	for _, tt := range []struct {
		t  Target
		ok bool
	}{
		{Target{Hook: XDP, Ifindex: 1}, true},
		{Target{Hook: XDP, Ifindex: 1, XDPMode: XDPModeSKB}, true},
		{Target{Hook: XDP, Ifindex: 1, XDPMode: "hw"}, false},
		{Target{Hook: XDP, Ifindex: 1, Direction: Ingress}, false},
		{Target{Hook: TC, Ifindex: 1, Direction: Egress}, true},
		{Target{Hook: TC, Ifindex: 1}, false},
		{Target{Hook: "tcx", Ifindex: 1}, false},
		{Target{Hook: XDP}, false},
	} {
		if err := tt.t.validate(); (err == nil) != tt.ok {
			t.Errorf("%+v: %v", tt.t, err)
		}
	}
	if got := PinDirName(Target{Hook: TC, Ifindex: 4, Direction: Egress}); got != "4-tc-egress" {
		t.Errorf("PinDirName %q", got)
	}
}

// On a kernel without freplace (this development host's), Supported says
// so, and the error says why.
func TestSupportedExplainsRefusal(t *testing.T) {
	err := Supported()
	if err == nil {
		t.Log("this kernel runs dispatchers")
		return
	}
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("error %v does not wrap ErrUnsupported", err)
	}
	t.Logf("dispatchers unsupported here: %v", err)
}
