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

func TestFromEnv(t *testing.T) {
	t.Setenv(EnvVar, "")
	if got := FromEnv(); got != Default {
		t.Errorf("FromEnv() with %s empty = %q, want %q", EnvVar, got, Default)
	}
	t.Setenv(EnvVar, "unix:///csi/csi.sock")
	if got := FromEnv(); got != "unix:///csi/csi.sock" {
		t.Errorf("FromEnv() = %q, want the variable's value", got)
	}
}
