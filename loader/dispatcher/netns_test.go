package dispatcher

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

func netnsIno(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A namespace that is gone, or is another one at the same path (a
// replaced sandbox's recycled pid), runs nothing: the error says so and
// wraps ErrNetnsGone, which the chain takes for its interface being gone.
func TestInNetnsChecksTheNamespace(t *testing.T) {
	self := "/proc/thread-self/ns/net"
	ino := netnsIno(t, self)
	for _, tc := range []struct {
		name, path string
		ino        uint64
	}{
		{"missing", filepath.Join(t.TempDir(), "ns"), 0},
		{"another namespace", self, ino + 1},
	} {
		ran := false
		err := InNetns(tc.path, tc.ino, func() error { ran = true; return nil })
		if ran || !errors.Is(err, ErrNetnsGone) || fault.Of(err) != fault.Precondition {
			t.Errorf("%s: ran %v, error %v", tc.name, ran, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("entering a namespace needs root")
	}
	var inside uint64
	if err := InNetns(self, ino, func() error { inside = netnsIno(t, "/proc/thread-self/ns/net"); return nil }); err != nil {
		t.Fatal(err)
	}
	if inside != ino || netnsIno(t, self) != ino {
		t.Errorf("ran in namespace %d, caller in %d, want %d", inside, netnsIno(t, self), ino)
	}
}

// A pod's chain moves only to the same hook in another namespace; an
// empty one just records where it is now. One whose namespace is gone
// opens empty.
func TestRetarget(t *testing.T) {
	gone := Target{Hook: XDP, Ifindex: 2, Interface: "eth0", Netns: filepath.Join(t.TempDir(), "ns"), NetnsIno: 7}
	c, err := Open(gone, filepath.Join(t.TempDir(), "chain"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.nsGone || len(c.Members()) != 0 {
		t.Fatalf("a chain in a namespace that is gone: nsGone %v, members %v", c.nsGone, c.Members())
	}
	if err := c.Update(nil, []string{"absent"}); err != nil {
		t.Errorf("removing from a chain whose namespace is gone: %v", err)
	}
	tc := Target{Hook: TC, Ifindex: 2, Interface: "eth0", Direction: Ingress, Netns: "/proc/self/ns/net", NetnsIno: 9}
	if err := c.Retarget(tc); err == nil {
		t.Error("an XDP chain moved to a tc hook")
	}
	host := gone
	host.Netns, host.NetnsIno = "", 0
	if err := c.Retarget(host); err == nil {
		t.Error("a pod's chain moved to the caller's namespace")
	}
	next := gone
	next.Netns, next.NetnsIno, next.Ifindex = "/proc/1/ns/net", 11, 3
	if err := c.Retarget(next); err != nil {
		t.Fatal(err)
	}
	if c.Target() != next || c.nsGone {
		t.Errorf("after the move: target %+v, nsGone %v", c.Target(), c.nsGone)
	}
}
