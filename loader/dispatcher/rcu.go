package dispatcher

import (
	"time"

	"golang.org/x/sys/unix"
)

// membarrierCmdGlobal is MEMBARRIER_CMD_GLOBAL: the kernel runs
// synchronize_rcu() before it returns (when more than one CPU is online).
const membarrierCmdGlobal = 1

// waitForReaders returns once every packet that may have entered the old
// dispatcher before a swap has left it. XDP and tc programs run inside RCU
// read-side sections, so one RCU grace period is enough; membarrier's
// global command waits for one. Only then may the old revision's members
// be detached: detaching an extension restores the stub it replaced, and a
// packet still inside the old dispatcher would skip that member.
func waitForReaders() {
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		// nohz_full kernels refuse the command: wait instead, far longer
		// than a packet takes.
		time.Sleep(100 * time.Millisecond)
	}
}
