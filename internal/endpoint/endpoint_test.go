package endpoint

import "testing"

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"unix:///run/x.sock", "/run/x.sock", true},
		{"unix:/run/x.sock", "/run/x.sock", true},
		{"/run/x.sock", "/run/x.sock", true},
		{"unix://relative.sock", "", false},
		{"tcp://127.0.0.1:1", "", false},
		{"relative.sock", "", false},
		{"%zz", "", false},
	} {
		got, err := Parse(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("Parse(%q) = %q, %v; want %q, ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}
