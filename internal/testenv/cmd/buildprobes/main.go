// Command buildprobes compiles the uprobe tests' target binaries
// (testenv.ProbeNames) into a directory, for test/vm/run.sh to ship into
// the VMs, which have no compiler.
//
//	go run ./internal/testenv/cmd/buildprobes DIR
package main

import (
	"fmt"
	"os"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: buildprobes DIR")
		os.Exit(2)
	}
	if err := testenv.BuildProbes(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "buildprobes:", err)
		os.Exit(1)
	}
}
