// Command render writes the bpfmount chart rendered with default values
// (release and namespace "bpfmount"): deploy/manifests/render.sh runs it to
// produce deploy/manifests/bpfmount.yaml.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/bpfmount/bpfmount/test/chart/render"
)

func main() {
	chartDir := flag.String("chart", "../../charts/bpfmount", "chart directory")
	out := flag.String("o", "-", "output file (- for standard output)")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: render [-chart DIR] [-o FILE]")
		os.Exit(2)
	}
	m, err := render.DefaultManifests(*chartDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
	if *out == "-" {
		_, err = os.Stdout.WriteString(m)
	} else {
		err = writeAtomic(*out, []byte(m))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

// writeAtomic replaces path in one rename, so a failed render never leaves
// a truncated file behind.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
