//go:build failpoints

package failpoint

import (
	"os"
	"syscall"
)

var armed = os.Getenv(Env)

// Hit kills the process with SIGKILL when step is the armed failpoint: no
// deferred function, no cleanup, exactly like a crash.
func Hit(step string) {
	if armed != "" && armed == step {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
