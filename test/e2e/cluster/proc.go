package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is one of the cluster's processes, known by its pid and its start
// time (field 22 of /proc/PID/stat, clock ticks since boot): a pid alone
// may name another process once this one is gone, the pair may not.
type proc struct {
	name  string
	pid   int
	start uint64
	// done is closed when a child of this program exits; nil for a
	// process Load found (not our child: we learn of its exit by pidfd).
	done chan struct{}
}

// startTime reads the start time of pid.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces or
	// parentheses itself: the fields that follow start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); the start time is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// open returns a pidfd for the process, or -1 when it is gone or the pid
// now names another process. Signals sent through the pidfd reach this
// process or nothing, even if the pid is reused meanwhile.
func (p *proc) open() (int, error) {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d (%s): %w", p.pid, p.name, err)
	}
	// Checked after the pidfd is open: the process it names cannot change.
	st, err := startTime(p.pid)
	if err != nil || st != p.start {
		unix.Close(fd)
		return -1, nil
	}
	return fd, nil
}

// exited says whether the process is gone (or its pid names another one).
func (p *proc) exited() bool {
	if p.done != nil {
		select {
		case <-p.done:
			return true
		default:
			return false
		}
	}
	fd, err := p.open()
	if err != nil || fd < 0 {
		return true
	}
	defer unix.Close(fd)
	return waitFD(fd, 0)
}

// waitFD waits up to d for a pidfd to become readable (its process has
// exited).
func waitFD(fd int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		ms := int(left / time.Millisecond)
		if ms < 0 {
			ms = 0
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// stop stops the process: SIGTERM, then SIGKILL after grace. A process
// whose pid now names another one is left alone.
func (p *proc) stop(grace time.Duration) error {
	fd, err := p.open()
	if err != nil || fd < 0 {
		return err
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stopping %s (pid %d): %w", p.name, p.pid, err)
	}
	if !waitFD(fd, grace) {
		if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("killing %s (pid %d): %w", p.name, p.pid, err)
		}
		if !waitFD(fd, 10*time.Second) {
			return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.pid)
		}
	}
	if p.done != nil {
		<-p.done // reaped by our Wait
	}
	return nil
}

func (c *Cluster) proc(name string) *proc {
	for _, p := range c.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// running says whether the named process was started and still runs.
func (c *Cluster) running(name string) bool {
	p := c.proc(name)
	return p != nil && !p.exited()
}

// start starts a component with its output in logs/<name>.log. Detached,
// it gets a session of its own and no parent death signal, so it outlives
// this program; otherwise it gets SIGTERM when the thread that started it
// dies, so a killed test leaves no cluster running.
func (c *Cluster) start(name, path string, args ...string) error {
	logf, err := os.Create(filepath.Join(c.Work, "logs", name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(path, args...)
	// Files, not pipes: nothing of this program sits between a detached
	// component and its log.
	cmd.Stdout, cmd.Stderr = logf, logf
	if c.detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	}
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", name, err)
	}
	st, err := startTime(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		return fmt.Errorf("reading the start time of %s: %w", name, err)
	}
	p := &proc{name: name, pid: cmd.Process.Pid, start: st, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	c.procs = append(c.procs, p)
	return c.saveIfDetached()
}
