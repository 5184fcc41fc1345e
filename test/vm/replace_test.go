package vm

import (
	"fmt"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Replacing the middle member, again and again, while frames flow (an
// upgrade in place): each new version takes the old one's slot, with the
// old one's order keys, and every frame sent meets exactly one version of
// the middle member, in the middle, between the first and the last.
// Replacing with another priority, or a key the chain does not hold, is
// refused and leaves the chain as it was. With two CPUs (run.sh's -smp 2
// run) the frames run on CPU 0 and the replacements on CPU 1.
func TestReplaceMemberUnderTraffic(t *testing.T) {
	requireVM(t)
	cpus := wantCPUs(t)
	forEachHook(t, func(t *testing.T, h hookCase) {
		c, from, to := openOnVeth(t, h)
		defer setChain(c)
		first, middle, last := runThree(t, h, c)
		created, rev := c.Members()[1].Created, c.Revision()

		bad := loadMember(t, h, "", 2, h.proceed, 25, h.mask(h.proceed))
		bad.Key = "bad"
		if err := c.Replace(middle.Key, bad.Member); err == nil {
			t.Fatal("a replacement with another priority was accepted")
		}
		if err := c.Replace("absent", bad.Member); fault.Of(err) != fault.NotFound {
			t.Fatalf("replacing an absent member: %v, want NotFound", err)
		}
		if got := c.Revision(); got != rev {
			t.Fatalf("refused replacements built revision %d (was %d)", got, rev)
		}

		const rounds = 6
		versions := []*member{middle}
		for i := 1; i <= rounds; i++ {
			next := loadMember(t, h, "", 2, h.proceed, 20, h.mask(h.proceed))
			next.Key = fmt.Sprintf("mid-v%d", i)
			next.Created = time.Now() // replaced by the old member's
			versions = append(versions, next)
		}
		replace := func() {
			time.Sleep(50 * time.Millisecond)
			for i := 1; i <= rounds; i++ {
				next := versions[i]
				if err := c.Replace(versions[i-1].Key, next.Member); err != nil {
					t.Error(err)
					return
				}
				ms := c.Members()
				if len(ms) != 3 || ms[0].Key != first.Key || ms[1].Key != next.Key || ms[2].Key != last.Key || !ms[1].Created.Equal(created) {
					t.Errorf("after replacement %d the chain runs %+v, want %s in the middle, created %v", i, ms, next.Key, created)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond)
		}
		sent := duringTraffic(t, cpus, newSender(t, from, to), replace)
		time.Sleep(100 * time.Millisecond)
		f, l := first.runs(t), last.runs(t)
		var mid uint64
		seen := 0
		for _, m := range versions {
			p := m.positions(t)
			r := m.runs(t)
			if r != p[1] {
				t.Errorf("member %s ran %d times, %d of them in the middle slot: positions %v", m.Key, r, p[1], p[:4])
			}
			if r > 0 {
				seen++
			}
			mid += r
		}
		t.Logf("%d CPUs: %d frames sent; first saw %d, the middle versions %d (%d of %d versions saw frames), last %d; revision %d",
			cpus, sent, f, mid, seen, len(versions), l, c.Revision())
		if f != sent || l != sent {
			t.Errorf("%d frames sent; the first member saw %d and the last %d: a frame skipped the chain or met a partial one", sent, f, l)
		}
		if mid != sent {
			t.Errorf("%d frames sent; the middle member's versions saw %d together: a frame met none of them, or two", sent, mid)
		}
		if seen < 2 {
			t.Errorf("frames met %d versions of the middle member, want several", seen)
		}
		if got := c.Revision(); got != rev+rounds {
			t.Errorf("revision %d, want %d: one per replacement", got, rev+rounds)
		}
	})
}
