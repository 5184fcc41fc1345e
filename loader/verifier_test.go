package loader

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/internal/fault"
)

func TestVerifierRejectionSaysWhy(t *testing.T) {
	id := Identity{Program: "xdp_stats", Hook: HookXDP, Interface: "eth0", Priority: 50}
	var log []string
	for i := 0; i < 5000; i++ {
		log = append(log, fmt.Sprintf("%d: (b7) r0 = %d ; source line with \x1b[31mescapes\x1b[0m", i, i))
	}
	log = append(log, strings.Repeat("x", 10000), "infinite loop detected at insn 42", "processed 3 insns")
	err := classifyLoadError(id, fmt.Errorf("load program: %w", &ebpf.VerifierError{Cause: unix.EINVAL, Log: log}))
	if fault.Of(err) != fault.Invalid {
		t.Fatalf("kind %v, want invalid: %v", fault.Of(err), err)
	}
	msg := err.Error()
	t.Log(msg)
	for _, want := range []string{`program "xdp_stats"`, "verifier rejected", "infinite loop detected at insn 42", "processed 3 insns", "4998: "} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q", want)
		}
	}
	if strings.Contains(msg, "4980: ") || strings.Contains(msg, "\x1b") {
		t.Errorf("message holds lines before the last %d, or control characters", verifierTailLines)
	}
	if len(msg) > verifierTailBytes+512 {
		t.Errorf("message is %d bytes", len(msg))
	}

	// No log at all still names the program and says so.
	err = classifyLoadError(id, &ebpf.VerifierError{Cause: unix.EACCES})
	if fault.Of(err) != fault.Invalid || !strings.Contains(err.Error(), "xdp_stats") || !strings.Contains(err.Error(), "no log") {
		t.Errorf("empty log: %v", err)
	}
}
