package testenv

import (
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The uprobe targets' C sources, one copy each: compiled at test time on
// a host with gcc, or beforehand by test/vm/run.sh (cmd/buildprobes) for
// the VMs, which have no compiler.
//
//go:embed probes/*.c
var probeSources embed.FS

// ProbeNames are the uprobe target binaries BuildProbes makes.
var ProbeNames = []string{"probe-target", "probe-server"}

// BuildProbes compiles the probe binaries (ProbeNames) statically into
// dir, with gcc.
func BuildProbes(dir string) error {
	for _, name := range ProbeNames {
		if err := compileProbe(name, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

func compileProbe(name, bin string) error {
	code, err := probeSources.ReadFile("probes/" + name + ".c")
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "bpfmount-probe")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, name+".c")
	if err := os.WriteFile(src, code, 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("gcc", "-O1", "-static", "-o", bin, src).CombinedOutput(); err != nil {
		return fmt.Errorf("gcc %s: %v: %s", name, err, out)
	}
	return nil
}

// probeBinary returns the prebuilt probe binary name from PrebuiltEnv's
// directory where it is there (the VMs), else compiles it at test time,
// skipping the test where gcc is missing.
func probeBinary(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv(PrebuiltEnv); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skipf("gcc not found and no prebuilt %s in %s: the uprobe target binary is built with it", name, PrebuiltEnv)
	}
	bin := filepath.Join(t.TempDir(), name)
	if err := compileProbe(name, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}
