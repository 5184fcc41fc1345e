//go:build !bpfmount_cli

package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/bpfmount/bpfmount/driver"
)

// klog's flags other than -v, which used to fill every command's help.
var klogOnly = []string{"add_dir_header", "alsologtostderr", "log_backtrace_at", "log_dir", "log_file",
	"log_file_max_size", "logtostderr", "one_output", "skip_headers", "skip_log_headers", "stderrthreshold", "vmodule"}

func helpOf(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, append(args, "--help")...)
	if err != nil {
		t.Fatalf("%v --help: %v", args, err)
	}
	return out
}

func TestHelpHasNoKlogFlags(t *testing.T) {
	for _, args := range [][]string{nil, {"publish"}, {"unpublish"}, {"list"}, {"version"}, {"image"}, {"image", "build"}, {"serve"}} {
		h := helpOf(t, args...)
		for _, f := range klogOnly {
			if strings.Contains(h, "--"+f) {
				t.Errorf("bpfmount %s --help shows klog's --%s", strings.Join(args, " "), f)
			}
		}
	}
	if h := helpOf(t, "serve"); !strings.Contains(h, "-v, --v Level") {
		t.Errorf("serve --help lacks -v:\n%s", h)
	}
	if h := helpOf(t, "publish"); strings.Contains(h, "--v ") {
		t.Errorf("publish --help has -v, which it does not use")
	}
	// Hidden, the flags still work for who sets them (old manifests).
	serve := newServeCmd()
	if err := serve.ParseFlags([]string{"--logtostderr=false", "-v=3", "--vmodule=x=2"}); err != nil {
		t.Errorf("serve no longer accepts klog's flags: %v", err)
	}
}

// No help text points to a file outside the repository.
func TestHelpIsSelfContained(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		text := c.Short + c.Long + c.Flags().FlagUsages()
		if strings.Contains(text, "DESIGN") {
			t.Errorf("%s help points to a design document outside the repository", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCmd())
	if h := helpOf(t, "publish"); !strings.Contains(h, "image, program, type") || !strings.Contains(h, "README.md") {
		t.Errorf("publish --help does not name the attributes itself:\n%s", h)
	}
}

// The help says what loader/bytecode does: with signatures required, local
// layouts (which carry none) are refused too.
func TestRequireSignaturesHelp(t *testing.T) {
	u := newServeCmd().Flags().Lookup("require-signatures").Usage
	for _, w := range []string{"every image", "--verify-key", "oci: layouts", "refused"} {
		if !strings.Contains(u, w) {
			t.Errorf("--require-signatures help %q lacks %q", u, w)
		}
	}
}

func TestVersionAndDriverName(t *testing.T) {
	if driverName != driver.Name {
		t.Errorf("the CLI's driver name %q differs from driver.Name %q", driverName, driver.Name)
	}
	out, err := run(t, "version")
	if err != nil || out != "bpfmount "+version+" (driver "+driver.Name+")\n" {
		t.Errorf("version = %q, %v", out, err)
	}
}
