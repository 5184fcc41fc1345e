package dispatcher

import (
	"strings"
	"testing"
)

func TestCheckMember(t *testing.T) {
	for _, c := range []struct {
		key, name string
		ok        bool
	}{
		{"a", "", true},
		{strings.Repeat("k", 64), strings.Repeat("n", 128), true},
		{"abc-123", "prog_1", true},
		{"", "p", false},
		{strings.Repeat("k", 65), "p", false},
		{"a_b", "p", false},
		{"a/b", "p", false},
		{"a\n", "p", false},
		{"k", strings.Repeat("n", 129), false},
		{"k", "a-b", false},
		{"k", "a\n", false},
	} {
		if err := checkMember(c.key, c.name); (err == nil) != c.ok {
			t.Errorf("checkMember(%q, %q) = %v, want ok %v", c.key, c.name, err, c.ok)
		}
	}
}
