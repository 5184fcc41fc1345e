package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

// releaseBinary is the binary `make build` made (make bench passes it in
// BPFMOUNT_BENCH_BIN), or one built here with the same flags.
func releaseBinary(t *testing.T) string {
	if bin := os.Getenv("BPFMOUNT_BENCH_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("BPFMOUNT_BENCH_BIN: %v", err)
		}
		return bin
	}
	return testenv.BuildDaemon(t, "")
}

// proc is one timed run of whole processes: wall time from the first
// exec to the last exit, and the CPU time (user + system) they used.
type proc struct{ wall, cpu time.Duration }

// runAll runs each command line in turn, failing the test on an error.
func runAll(t *testing.T, lines ...[]string) proc {
	t.Helper()
	var p proc
	start := time.Now()
	for _, l := range lines {
		cmd := exec.Command(l[0], l[1:]...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(l, " "), err, out)
		}
		p.cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	p.wall = time.Since(start)
	return p
}

type procs []proc

func (ps procs) wall() []time.Duration { return ps.pick(func(p proc) time.Duration { return p.wall }) }
func (ps procs) cpu() []time.Duration  { return ps.pick(func(p proc) time.Duration { return p.cpu }) }
func (ps procs) pick(f func(proc) time.Duration) []time.Duration {
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		out[i] = f(p)
	}
	return out
}

// benchCLI compares the bpfmount command line with the C tools people use
// to load an XDP program today, as whole processes, process start
// included, paired and interleaved.
func benchCLI(t *testing.T, r *report) {
	const pairs = 40 // the XDP rows step by RCU grace periods: enough rounds for steady medians
	bin := releaseBinary(t)
	p := testenv.NewProcDaemon(t, bin)
	v := testenv.NewVeth(t)
	obj := testenv.RepoPath(testenv.XDPCounterObject)
	img := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	dir := testenv.ShortTempDir(t)
	pin := filepath.Join(testenv.BPFFS(t), "bpftool-prog")
	p.Start(t)

	type side struct {
		name, missing string
		run           func(i int) proc
		got           procs
	}
	sides := []*side{{
		name: "bpfmount publish + unpublish",
		run: func(i int) proc {
			target := filepath.Join(dir, fmt.Sprint("cli-", i))
			return runAll(t,
				[]string{bin, "publish", "--endpoint", p.Endpoint, "--target", target, "--attr", "image=" + img, "--attr", "interface=" + v.Host},
				[]string{bin, "unpublish", "--endpoint", p.Endpoint, "--target", target})
		},
	}}
	var skipped []string
	if _, err := exec.LookPath("xdp-loader"); err == nil {
		sides = append(sides, &side{
			name: "xdp-loader load + unload",
			run: func(int) proc {
				return runAll(t, []string{"xdp-loader", "load", "-m", "native", v.Host, obj}, []string{"xdp-loader", "unload", "--all", v.Host})
			},
		})
	} else {
		skipped = append(skipped, "xdp-loader is not installed (Debian: `apt-get install -y xdp-tools`): its row is skipped.")
	}
	if _, err := exec.LookPath("bpftool"); err == nil {
		sides = append(sides, &side{
			name: "bpftool prog load + net attach xdpdrv + net detach",
			run: func(int) proc {
				pr := runAll(t, []string{"bpftool", "prog", "load", obj, pin},
					[]string{"bpftool", "net", "attach", "xdpdrv", "pinned", pin, "dev", v.Host},
					[]string{"bpftool", "net", "detach", "xdpdrv", "dev", v.Host})
				start := time.Now()
				if err := os.Remove(pin); err != nil {
					t.Fatal(err)
				}
				pr.wall += time.Since(start)
				return pr
			},
		})
	} else {
		skipped = append(skipped, "bpftool is not installed (Debian: `apt-get install -y bpftool`): its row is skipped.")
	}
	goNothing := buildGoNothing(t)
	alone := []*side{
		{name: "bpfmount version", run: func(int) proc { return runAll(t, []string{bin, "version"}) }},
		{name: "a Go program that does nothing (Go's start floor)", run: func(int) proc { return runAll(t, []string{goNothing}) }},
		{name: "true (process start floor)", run: func(int) proc { return runAll(t, []string{"true"}) }},
	}

	// One warm-up round (page cache, the daemon's image cache), then the
	// pairs, each round in a rotated order so no side always goes first.
	for i := -1; i < pairs; i++ {
		for j := range sides {
			s := sides[(max(i, 0)+j)%len(sides)]
			pr := s.run(i + 1)
			if i >= 0 {
				s.got = append(s.got, pr)
			}
		}
		for _, s := range alone {
			if pr := s.run(i + 1); i >= 0 {
				s.got = append(s.got, pr)
			}
		}
	}
	if id := testenv.XDPProgram(t, v.Host); id != 0 {
		t.Fatalf("program %d still attached to %s", id, v.Host)
	}
	testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v)

	ours := sides[0].got
	var rows strings.Builder
	fmt.Fprintf(&rows, "| %s | %s | %s | | |\n", sides[0].name, ms(percentile(ours.wall(), .5)), ms(percentile(ours.cpu(), .5)))
	for _, s := range sides[1:] {
		fmt.Fprintf(&rows, "| %s | %s | %s | **%.2f** | %.2f |\n", s.name, ms(percentile(s.got.wall(), .5)), ms(percentile(s.got.cpu(), .5)),
			float64(percentile(ours.wall(), .5))/float64(percentile(s.got.wall(), .5)),
			float64(percentile(ours.cpu(), .5))/float64(max(percentile(s.got.cpu(), .5), time.Microsecond)))
	}
	for _, s := range alone {
		fmt.Fprintf(&rows, "| %s | %s | %s | | |\n", s.name, ms(percentile(s.got.wall(), .5)), ms(percentile(s.got.cpu(), .5)))
	}
	st, _ := os.Stat(bin)
	note := ""
	if len(skipped) > 0 {
		note = "\n" + strings.Join(skipped, "\n") + "\n"
	}
	r.add("The command line against the C tools", fmt.Sprintf(`
Whole processes, process start included on both sides, %d rounds, each
round running every side once in a rotated order (after one warm-up round):
load the XDP counter object natively on a veth and take it off again. The
bpfmount side asks the daemon, already running, to publish a volume (the
image is an OCI layout; it also mounts the maps) and to unpublish it. The
binary is the release build (%.1f MiB). Ratios are
bpfmount's median over the tool's median. Goal: ≤ 1.0×.

| command(s) | wall p50 | CPU p50 (user + system) | bpfmount wall ratio | CPU ratio |
|---|---|---|---|---|
%s%s
Two starts of the bpfmount binary (twice the `+"`bpfmount version`"+` row) are %s
of bpfmount's %s; a Go program that does nothing, built the same way, takes
%s per start. The binary is the client build (make build's bin/bpfmount,
`+"`-tags bpfmount_cli`"+`): it links no driver, loader, image or metrics code,
and no gRPC, protobuf or net/http either. It makes its unary calls itself
(internal/grpcwire: HTTP/2 without TLS, by prior knowledge, on the
daemon's unix socket; frames written and read by the package, headers by
x/net's hpack) with the CSI requests encoded by internal/csiwire
(protobuf's wire format with encoding/binary's varints). What its start
pays over the Go program's is mostly cobra (with text/template and
regexp) and a larger binary to map; its package initialisation ends
about a millisecond after exec (`+"`GODEBUG=inittrace=1`"+`). Before
this client dropped net/http (and with it crypto/tls and crypto/x509) and
protobuf's protowire (whose detrand hashes the executable at start), its
start took 3.3 ms on this machine and its binary was 6.5 MiB. Each
process opens one HTTP/2 connection for its calls (about 0.1 ms more than
a call on an open one).
The rest is the daemon's side: unpublish first asks for the volume at
--target (the daemon describes that one volume and queries no program for
it), then unpublishes: three gRPC calls for the pair; and the daemon's
kernel work has more than the tools' (a bpffs mounted, bound and remounted
read-only, and both unmounted again).

xdp-loader finds no bpffs at /sys/fs/bpf on this host, so it loads the
program without its dispatcher (as it does on kernels without freplace).
The bpftool side also removes its program pin (in the test's bpffs).

Reproduce: `+"`sudo make bench`"+` (TestBenchmarkReport/cli; needs Debian's xdp-tools and bpftool).
`, pairs, float64(st.Size())/(1<<20), rows.String(), note,
		ms(2*percentile(alone[0].got.wall(), .5)), ms(percentile(ours.wall(), .5)), ms(percentile(alone[1].got.wall(), .5))))
}

// buildGoNothing builds a Go program that only exits, with the release
// build's flags: the floor under any Go command's start and exit.
func buildGoNothing(t *testing.T) string {
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "nothing")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building a Go program that does nothing: %v\n%s", err, out)
	}
	return bin
}
