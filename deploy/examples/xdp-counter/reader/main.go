// Command xdp-counter-reader prints (and optionally serves over HTTP) the
// counts of the example XDP counter, read from the map a bpfmount volume
// mounts into its container.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/bpfmount/bpfmount/deploy/examples/xdp-counter/counter"
)

func main() {
	path := flag.String("map", "/run/bpf/counter/xdp_stats_map", "pinned xdp_stats_map in the bpfmount volume")
	interval := flag.Duration("interval", 2*time.Second, "how often to print the counts")
	once := flag.Bool("once", false, "print the counts once and exit")
	listen := flag.String("listen", "", "serve the counts as JSON at this address (e.g. :8080)")
	status := flag.String("status", "", "the volume's bpfmount_status map (interface pod): logged with the counts, so the log says when the program was attached")
	flag.Parse()

	if *once {
		c, err := counter.Read(*path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "xdp-counter-reader:", err)
			os.Exit(1)
		}
		fmt.Printf("packets=%d bytes=%d\n", c.Packets, c.Bytes)
		return
	}
	if *listen != "" {
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
			c, err := counter.Read(*path)
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(c)
		})
		go func() { log.Fatal(http.ListenAndServe(*listen, nil)) }()
	}
	for {
		c, err := counter.Read(*path)
		state := ""
		if *status != "" {
			if s, err := counter.ReadStatus(*status); err != nil {
				state = "status=unknown "
				log.Printf("reading the status: %v", err)
			} else {
				state = fmt.Sprintf("status=%s ", s.State)
			}
		}
		if err != nil {
			log.Printf("reading counts: %v", err)
		} else {
			log.Printf("%spackets=%d bytes=%d", state, c.Packets, c.Bytes)
		}
		time.Sleep(*interval)
	}
}
