package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
	"github.com/bpfmount/bpfmount/loader/dispatcher"
)

// A pod interface's chain is keyed by the pod and the interface name (and
// hook, direction), never by the namespace or the ifindex: an eth0 in
// every pod, each its own chain; and no name a host chain could have.
func TestPodChainName(t *testing.T) {
	base := Identity{Hook: HookXDP, Interface: "eth0", Pod: "0b4e6f2a-1111-2222-3333-444455556666"}
	other := base
	other.Pod = "0b4e6f2a-1111-2222-3333-444455556667"
	net1 := base
	net1.Interface = "net1"
	in := base
	in.Hook, in.Direction = HookTC, Ingress
	out := in
	out.Direction = Egress
	seen := map[string]Identity{}
	for _, id := range []Identity{base, other, net1, in, out} {
		name := podChainName(id)
		if prev, dup := seen[name]; dup {
			t.Errorf("%+v and %+v share chain %s", prev, id, name)
		}
		seen[name] = id
		if !strings.HasPrefix(name, "pod-") || len(name) > 64 || strings.ContainsAny(name, "/.:") {
			t.Errorf("chain name %q", name)
		}
		if _, ok := parsePinDirName(name); ok {
			t.Errorf("%q parses as a host chain's", name)
		}
	}
	again := base
	again.Program, again.Priority = "other", 99
	if podChainName(again) != podChainName(base) {
		t.Error("two programs on one pod's eth0 got different chains")
	}
}

// Which deferred identities go through a dispatcher: xdp and tc on a
// pod's own interface where the kernel chains, never tcx, a container's
// probe, or anything where it does not.
func TestPodChained(t *testing.T) {
	pod := "0b4e6f2a-1111-2222-3333-444455556666"
	for _, tc := range []struct {
		id        Identity
		canChain  bool
		want      bool
		checkFail bool
	}{
		{Identity{Hook: HookXDP, Interface: "eth0", Pod: pod}, true, true, false},
		{Identity{Hook: HookTC, Interface: "eth0", Pod: pod, Direction: Ingress}, true, true, false},
		{Identity{Hook: HookXDP, Interface: "eth0", Pod: pod}, false, false, false},
		{Identity{Hook: HookTC, Interface: "eth0", Pod: pod, Direction: Ingress}, false, false, false},
		{Identity{Hook: HookTCX, Interface: "eth0", Pod: pod, Direction: Ingress}, true, false, false},
		{Identity{Hook: HookXDP, Interface: "eth0"}, true, false, false},
		{Identity{Hook: HookCgroupSKB, Pod: pod, Direction: Ingress}, true, false, true},
	} {
		l := &Loader{canChain: tc.canChain}
		if got := l.podChained(tc.id); got != tc.want {
			t.Errorf("%+v (chaining %v): podChained %v, want %v", tc.id, tc.canChain, got, tc.want)
		}
		if err := checkDeferred(tc.id); (err != nil) != tc.checkFail {
			t.Errorf("%+v: checkDeferred: %v", tc.id, err)
		}
	}
}

// Where the kernel cannot chain, tc on a pod's interface is refused as on
// a host interface (the dispatcher needs freplace), before anything is
// pinned.
func TestPodTCNeedsFreplace(t *testing.T) {
	l := &Loader{root: t.TempDir()}
	e := &entry{id: Identity{Hook: HookTC, Interface: "eth0", Pod: "0b4e6f2a-1111-2222-3333-444455556666", Direction: Ingress}, key: "k"}
	err := l.pinDeferred(e)
	if fault.Of(err) != fault.Precondition || !strings.Contains(err.Error(), "needs freplace") {
		t.Fatalf("got %v", err)
	}
}

// A pod interface's chain has the dispatcher's slots: the 11th program
// for it is refused at publish, naming the volumes that hold them; other
// pods, interfaces and directions are unaffected.
func TestPodSlotsFull(t *testing.T) {
	pod := "0b4e6f2a-1111-2222-3333-444455556666"
	l := &Loader{canChain: true, entries: map[string]*entry{}}
	base := Identity{Hook: HookTC, Interface: "eth0", Pod: pod, Direction: Ingress, Program: "p"}
	for i := range 10 {
		id := base
		id.Priority = i
		l.entries[id.Key()] = &entry{id: id, owners: map[string]struct{}{fmt.Sprintf("vol-%02d", i): {}}}
		if i < 9 {
			if err := l.podSlotsFull(base); err != nil {
				t.Fatalf("with %d members: %v", i+1, err)
			}
		}
	}
	err := l.podSlotsFull(base)
	if fault.Of(err) != fault.Exhausted || !strings.Contains(err.Error(), "vol-00, vol-01") || !strings.Contains(err.Error(), `tc ingress on the pod's "eth0"`) {
		t.Fatalf("11th: %v", err)
	}
	other := base
	other.Pod = "0b4e6f2a-1111-2222-3333-444455556667"
	egress := base
	egress.Direction = Egress
	for _, id := range []Identity{other, egress} {
		if err := l.podSlotsFull(id); err != nil {
			t.Errorf("%+v: %v", id, err)
		}
	}
}

// Pods' chains are reported together per hook under interface "pod",
// never under the pod's own interface name (a label pods would choose,
// colliding with the node's eth0), and their revision counts never shrink
// as pods leave.
func TestChainsReportPodsTogether(t *testing.T) {
	l := &Loader{chains: map[string]*dispatcher.Chain{}}
	open := func(netns string) *dispatcher.Chain {
		c, err := dispatcher.Open(dispatcher.Target{Hook: dispatcher.XDP, Ifindex: 2, Interface: "eth0", Netns: netns, NetnsIno: 1}, filepath.Join(t.TempDir(), "c"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	gone := filepath.Join(t.TempDir(), "ns") // opens empty, touching no namespace
	l.chains["pod-a"], l.chains["pod-b"] = open(gone), open(gone)
	l.podBuilds = map[string]uint64{"xdp/": 3}
	stats := l.Chains()
	if len(stats) != 1 || stats[0].Interface != "pod" || stats[0].Hook != "xdp" || stats[0].Revisions != 3 {
		t.Fatalf("stats %+v", stats)
	}
	id := Identity{Hook: HookXDP, Interface: "eth0", Pod: "a"}
	l.chains[podChainName(id)] = l.chains["pod-a"]
	l.forgetEmptyPodChain(id, l.chains["pod-a"])
	if _, ok := l.chains[podChainName(id)]; ok {
		t.Error("an empty pod chain stayed open")
	}
	if s := l.Chains(); len(s) != 1 || s[0].Revisions != 3 {
		t.Errorf("after a pod left: %+v", s)
	}
}

// Prune removes the pins of a pod interface's chain that no attachment
// holds (a crash left it behind with its volume's record gone), or whose
// every member was last in a namespace that is gone or is another one
// now, or whose members never recorded one (a crash mid-join); a chain
// one of whose members is in a living namespace stays.
func TestPrunePodChains(t *testing.T) {
	root := t.TempDir()
	l := &Loader{root: root, canChain: true, entries: map[string]*entry{}, chains: map[string]*dispatcher.Chain{}}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	alive := fmt.Sprintf("%d:/proc/self/ns/net", st.Ino)
	pod := func(n int, prio int) Identity {
		return Identity{Hook: HookXDP, Interface: "eth0", Pod: fmt.Sprintf("0b4e6f2a-1111-2222-3333-44445555666%d", n), Program: "p", Priority: prio}
	}
	hold := func(id Identity, netns string) string {
		key := id.Key()
		l.entries[key] = &entry{id: id, key: key, owners: map[string]struct{}{"vol": {}}}
		if err := os.MkdirAll(l.pinDir(key), 0o700); err != nil {
			t.Fatal(err)
		}
		if netns != "" {
			if err := os.Symlink(netns, filepath.Join(l.pinDir(key), netnsPin)); err != nil {
				t.Fatal(err)
			}
		}
		return key
	}
	chainDir := func(id Identity) string {
		d := filepath.Join(root, "dispatchers", podChainName(id))
		if err := os.MkdirAll(filepath.Join(d, "rev-1"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "rev-1", "dispatcher"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return d
	}
	live, liveAndGone := pod(1, 1), pod(1, 2) // one chain, two members
	hold(live, alive)
	hold(liveAndGone, "4242:/nonexistent/ns/net")
	kept := chainDir(live)

	gone := pod(2, 1)
	goneKey := hold(gone, "4242:/nonexistent/ns/net")
	replaced := pod(3, 1)
	hold(replaced, fmt.Sprintf("%d:/proc/self/ns/net", st.Ino+1))
	unheld := pod(4, 1)
	neverRecorded := pod(5, 1)
	hold(neverRecorded, "")
	var pruned []string
	for _, id := range []Identity{gone, replaced, unheld, neverRecorded} {
		pruned = append(pruned, chainDir(id))
	}

	if err := l.pruneChains(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(kept, "rev-1", "dispatcher")); err != nil {
		t.Errorf("the chain of a pod whose namespace lives lost its pins: %v", err)
	}
	for _, d := range pruned {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s stayed (%v)", filepath.Base(d), err)
		}
	}
	if _, err := os.Lstat(filepath.Join(l.pinDir(goneKey), netnsPin)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a pruned chain's member still records its gone namespace (%v)", err)
	}
	if _, err := os.Stat(l.pinDir(goneKey)); err != nil {
		t.Errorf("a held member's own pins went with its chain: %v", err)
	}

	// Where the kernel cannot chain, nothing is touched.
	again := chainDir(unheld)
	l.canChain = false
	if err := l.pruneChains(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(again); err != nil {
		t.Errorf("pruned without chaining: %v", err)
	}
}
