package vm

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
	"github.com/bpfmount/bpfmount/test/programs"
)

// probeTarget is the user function the uprobe test traces in this very
// binary.
//
//go:noinline
func probeTarget(i int) int { return i*3 + 1 }

// The kernel functions the tests trace when the test calls getpid: the
// syscall's entry point for kprobes, and a function it calls that the
// kernel describes in BTF (syscall wrappers are not) for fentry/fexit.
const (
	kernelTarget = "__x64_sys_getpid"
	btfTarget    = "__task_pid_nr_ns"
)

// probeTargetOffset is probeTarget's offset in the test binary's file:
// `go test` strips symbols, so the uprobe names the address.
func probeTargetOffset(t *testing.T, self string) uint64 {
	t.Helper()
	va := uint64(reflect.ValueOf(probeTarget).Pointer())
	f, err := elf.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && p.Vaddr <= va && va < p.Vaddr+p.Memsz {
			return va - p.Vaddr + p.Off
		}
	}
	t.Fatalf("probeTarget at %#x is in no executable segment of %s", va, self)
	return 0
}

// Every tracing hook fires on the VM kernels, where kprobes and BPF
// trampolines work (the development host refuses both): the counter of
// each program rises by exactly the number of times its target ran, and
// stops when the program is released.
func TestTracingHooksFire(t *testing.T) {
	requireVM(t)
	img, err := bytecode.Build(programs.TraceCountObject(), "tracecount_bpfel.o", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if err := bytecode.WriteLayout(layout, "v1", img); err != nil {
		t.Fatal(err)
	}
	ref := bytecode.LayoutScheme + layout + ":v1"
	l, err := loader.New(loader.Options{Root: pinDir(t), Fetcher: bytecode.Layout{}, NodeName: "vm", MountTracefs: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const calls = 5
	getpid := func() {
		for i := 0; i < calls; i++ {
			unix.Getpid()
		}
	}
	callProbeTarget := func() {
		for i := 0; i < calls; i++ {
			probeTarget(i)
		}
	}
	for _, c := range []struct {
		hook     loader.Hook
		attachTo string
		slot     uint32
		trigger  func()
	}{
		{loader.HookTracepoint, "syscalls/sys_enter_getpid", programs.SlotTracepoint, getpid},
		{loader.HookKprobe, kernelTarget, programs.SlotKprobe, getpid},
		{loader.HookKretprobe, kernelTarget, programs.SlotKretprobe, getpid},
		{loader.HookFentry, btfTarget, programs.SlotFentry, getpid},
		{loader.HookFexit, btfTarget, programs.SlotFexit, getpid},
		{loader.HookUprobe, fmt.Sprintf("%s:%#x", self, probeTargetOffset(t, self)), programs.SlotUprobe, callProbeTarget},
	} {
		t.Run(string(c.hook), func(t *testing.T) {
			if err := l.CheckHook(c.hook); err != nil {
				t.Fatalf("the VM kernel must run %s: %v", c.hook, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r, err := l.Resolve(ctx, loader.Request{Image: bytecode.Request{Reference: ref}, Program: "count_" + string(c.hook), Hook: c.hook, AttachTo: c.attachTo})
			if err != nil {
				t.Fatal(err)
			}
			p, err := l.Acquire(ctx, r, "vol")
			if err != nil {
				t.Fatal(err)
			}
			m, err := p.Maps["counts"].Clone()
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			read := func() uint64 {
				var n uint64
				if err := m.Lookup(c.slot, &n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			before := read()
			c.trigger()
			if got := read() - before; got < calls {
				t.Fatalf("%s on %s ran %d times for %d calls", c.hook, c.attachTo, got, calls)
			}
			if err := l.Release(p.Key, "vol"); err != nil {
				t.Fatal(err)
			}
			before = read()
			c.trigger()
			if got := read(); got != before {
				t.Fatalf("%s still runs after release (%d -> %d)", c.hook, before, got)
			}
		})
	}
}

// A kernel function that does not exist is the request's fault.
func TestTracingMissingKernelFunction(t *testing.T) {
	requireVM(t)
	img, err := bytecode.Build(programs.TraceCountObject(), "tracecount_bpfel.o", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if err := bytecode.WriteLayout(layout, "v1", img); err != nil {
		t.Fatal(err)
	}
	ref := bytecode.LayoutScheme + layout + ":v1"
	root := pinDir(t)
	l, err := loader.New(loader.Options{Root: root, Fetcher: bytecode.Layout{}, NodeName: "vm"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, h := range []loader.Hook{loader.HookKprobe, loader.HookFentry} {
		ctx := context.Background()
		r, err := l.Resolve(ctx, loader.Request{Image: bytecode.Request{Reference: ref}, Program: "count_" + string(h), Hook: h, AttachTo: "no_such_function_xyz"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = l.Acquire(ctx, r, "vol")
		if err == nil || !strings.Contains(err.Error(), `"no_such_function_xyz"`) {
			t.Fatalf("%s on a missing function: %v, want an error naming it", h, err)
		}
		if ents, _ := os.ReadDir(filepath.Join(root, "programs")); len(ents) != 0 {
			t.Fatalf("%s: pins left behind: %v", h, ents)
		}
	}
}
