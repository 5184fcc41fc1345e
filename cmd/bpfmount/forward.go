//go:build bpfmount_cli

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// daemonBinary is the whole program's name beside the client.
const daemonBinary = "bpfmountd"

// forwardedEnv marks a process the client exec'd as bpfmountd.
const forwardedEnv = "BPFMOUNT_FORWARDED_TO"

// daemonCommands stand in for serve and image: they exec the whole
// program with the same arguments, so the client never links the daemon's
// packages and `bpfmount serve` still works. Exec (not a child) keeps the
// PID, so signals and exit codes are the daemon's own.
func daemonCommands() []*cobra.Command {
	return []*cobra.Command{
		forwardCmd("serve", "Run the CSI node plugin daemon"),
		forwardCmd("image", "Build, inspect and sign bytecode images (bpfman's image format)"),
	}
}

func forwardCmd(name, short string) *cobra.Command {
	return &cobra.Command{
		Use:                name,
		Short:              short,
		DisableFlagParsing: true, // every flag, --help included, is the daemon's
		RunE: func(cmd *cobra.Command, args []string) error {
			if p := os.Getenv(forwardedEnv); p != "" {
				// A client build installed as bpfmountd would exec itself
				// for ever.
				return fmt.Errorf("%s is the client-only build too, not the full program: reinstall it (make build puts both in bin/)", p)
			}
			path, err := findDaemon()
			if err != nil {
				return err
			}
			argv := append([]string{path, name}, args...)
			return syscall.Exec(path, argv, append(os.Environ(), forwardedEnv+"="+path))
		},
	}
}

// findDaemon looks beside this executable first, then in PATH.
func findDaemon() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), daemonBinary)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(daemonBinary); err == nil {
		return p, nil
	} else if !errors.Is(err, exec.ErrNotFound) {
		return "", err
	}
	return "", fmt.Errorf("this bpfmount is the client-only build and %s, the full program that serves and builds images, is neither beside it nor in PATH: install both (make build puts them in bin/)", daemonBinary)
}
