// Command pause is the e2e cluster's sandbox ("pause") image entrypoint: it
// holds a pod's namespaces open and exits on SIGTERM or SIGINT. There is no
// registry in the test, so the image is built from this static binary.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
