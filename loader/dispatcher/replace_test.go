package dispatcher

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// A replacement takes the old member's order keys, so it sorts into the
// old member's slot whatever its own creation time; one with another
// priority or program name, or of a member the chain lacks, is refused.
func TestReplaceTakesTheOldSlot(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := &Chain{target: Target{Hook: XDP, Ifindex: 1, Interface: "eth0"}}
	set := []Member{
		{Key: "a", Name: "p", Priority: 10, Created: t0},
		{Key: "b", Name: "p", Priority: 20, Created: t0},
		{Key: "c", Name: "p", Priority: 20, Created: t0.Add(time.Second)},
	}
	// Created after c: sorted by its own time, it would run after c.
	ch := &change{add: []Member{{Key: "b2", Name: "p", Priority: 20, Created: t0.Add(time.Hour)}}, remove: []string{"b"}, replaces: "b"}
	next, changed, err := c.apply(set, ch)
	if err != nil || !changed {
		t.Fatalf("apply: %v, changed %v", err, changed)
	}
	slices.SortFunc(next, Compare)
	var keys []string
	for _, m := range next {
		keys = append(keys, m.Key)
	}
	if !slices.Equal(keys, []string{"a", "b2", "c"}) || !next[1].Created.Equal(t0) {
		t.Fatalf("after the replacement the chain runs %v (b2 created %v), want [a b2 c] with b2 created %v", keys, next[1].Created, t0)
	}

	for _, tc := range []struct {
		name string
		m    Member
		old  string
		want string
		kind fault.Kind
	}{
		{"another priority", Member{Key: "x", Name: "p", Priority: 30}, "b", "keeps the program name and priority", fault.Internal},
		{"another name", Member{Key: "x", Name: "q", Priority: 20}, "b", "keeps the program name and priority", fault.Internal},
		{"absent member", Member{Key: "x", Name: "p", Priority: 20}, "zz", "has no member zz", fault.NotFound},
	} {
		ch := &change{add: []Member{tc.m}, remove: []string{tc.old}, replaces: tc.old}
		_, _, err := c.apply(set, ch)
		if err == nil || !strings.Contains(err.Error(), tc.want) || fault.Of(err) != tc.kind {
			t.Errorf("%s: %v, want a %v error containing %q", tc.name, err, tc.kind, tc.want)
		}
	}
}
