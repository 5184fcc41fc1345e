package loader

import "testing"

func TestIdentityKeyIgnoresProceedOnOrder(t *testing.T) {
	a := Identity{Digest: "sha256:00", Program: "p", Hook: HookXDP, Interface: "eth0", Priority: 5, ProceedOn: []string{"pass", "drop"}}
	b := a
	b.ProceedOn = []string{"drop", "pass"}
	if a.Key() != b.Key() {
		t.Fatal("proceedOn order changed the key")
	}
	c := a
	c.Priority = 6
	if a.Key() == c.Key() {
		t.Fatal("a different priority kept the key")
	}
	d := a
	d.Globals = map[string]string{"x": "00"}
	if a.Key() == d.Key() {
		t.Fatal("globals did not change the key")
	}
}

func BenchmarkIdentityKey(b *testing.B) {
	id := Identity{Digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Program: "xdp_stats",
		Hook: HookXDP, Interface: "eth0", Priority: 50, ProceedOn: []string{"pass", "dispatcher_return"}, XDPMode: "auto"}
	b.ReportAllocs()
	for b.Loop() {
		_ = id.Key()
	}
}
