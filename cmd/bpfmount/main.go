// Command bpfmount is the bpfmount CSI node plugin and its command-line
// client: `serve` runs the daemon; `publish`, `unpublish` and `list` use it
// on a single host, through the same CSI calls kubelet makes, and `image`
// builds, inspects and signs bytecode images.
//
// The default build is the whole program. Built with the tag bpfmount_cli
// it is the client alone (publish, unpublish, list, version), which links
// none of the daemon's packages and so starts in a few milliseconds; its
// `serve` and `image` exec the whole program, installed beside it as
// bpfmountd (make build makes both).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// driverName is the CSI driver name (driver.Name, which the client does not
// link; a test keeps the two equal).
const driverName = "csi.bpfmount.io"

// version is set at build time (-X main.version=...); the whole program
// falls back to driver.Version, which older build scripts set.
var version = "dev"

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "bpfmount:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "bpfmount",
		Short:         "Load eBPF programs and expose their maps as CSI volumes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newPublishCmd(), newUnpublishCmd(), newListCmd(), newVersionCmd())
	root.AddCommand(daemonCommands()...)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "bpfmount %s (driver %s)\n", version, driverName)
		},
	}
}
