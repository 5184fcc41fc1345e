// Command bpfmount is the bpfmount CSI node plugin and its command-line
// client: `serve` runs the daemon; `publish`, `unpublish` and `list` use it
// on a single host, through the same CSI calls kubelet makes.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver"
)

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
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)
	root.PersistentFlags().AddGoFlagSet(klogFlags)
	root.AddCommand(newServeCmd(), newPublishCmd(), newUnpublishCmd(), newListCmd(), newVersionCmd(), newImageCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "bpfmount %s (driver %s)\n", driver.Version, driver.Name)
		},
	}
}
