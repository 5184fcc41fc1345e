//go:build !bpfmount_cli

package main

import (
	"github.com/spf13/cobra"

	"github.com/bpfmount/bpfmount/driver"
)

func init() {
	if version == "dev" {
		version = driver.Version
	}
}

// daemonCommands are the commands that need the daemon's packages: the
// whole program has them built in.
func daemonCommands() []*cobra.Command {
	return []*cobra.Command{newServeCmd(), newImageCmd()}
}
