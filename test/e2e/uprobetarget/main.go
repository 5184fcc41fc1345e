// Command uprobetarget is the e2e uprobe test's probed binary: it calls
// tick, a function the test probes (main.tick), 100 times on each SIGUSR1
// and never otherwise, so the test knows how many calls each signal adds.
// Without arguments it starts a child (itself, with "child") that does the
// same, and waits; with "once" it calls tick 100 times and exits (the same
// binary run on the node).
package main

import (
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

var calls int

//go:noinline
func tick() { calls++ }

func ticks() {
	for i := 0; i < 100; i++ {
		tick()
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "once" {
		ticks()
		return
	}
	// The handler is in place before the child starts: a test that sees
	// the child may signal the parent.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	if len(os.Args) == 1 {
		child := exec.Command("/proc/self/exe", "child")
		child.Stdout, child.Stderr = os.Stdout, os.Stderr
		if err := child.Start(); err != nil {
			panic(err)
		}
		go func() { child.Wait(); os.Exit(1) }() // the container restarts without its child
	}
	os.Stdout.WriteString("ready\n")
	for range sig {
		ticks()
	}
}
