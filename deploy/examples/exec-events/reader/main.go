// Command exec-events-reader prints, one JSON object a line, the exec
// events the example tracepoint program reports through the ring buffer a
// bpfmount volume mounts into its container.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/bpfmount/bpfmount/deploy/examples/exec-events/events"
)

func main() {
	path := flag.String("map", "/run/bpf/exec/events", "pinned events ring buffer in the bpfmount volume")
	count := flag.Int("count", 0, "exit after this many events (0: never)")
	timeout := flag.Duration("timeout", 0, "exit with an error when no event comes for this long (0: wait forever)")
	flag.Parse()

	r, err := events.Open(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "exec-events-reader:", err)
		os.Exit(1)
	}
	defer r.Close()
	enc := json.NewEncoder(os.Stdout)
	for n := 0; *count == 0 || n < *count; n++ {
		var deadline time.Time
		if *timeout > 0 {
			deadline = time.Now().Add(*timeout)
		}
		ev, err := r.Next(deadline)
		if err != nil {
			fmt.Fprintln(os.Stderr, "exec-events-reader:", err)
			os.Exit(1)
		}
		enc.Encode(ev)
	}
}
