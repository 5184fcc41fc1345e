package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/state"
)

type clientOptions struct {
	endpoint string
	volumeID string
	target   string
	timeout  time.Duration
}

func (o *clientOptions) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.endpoint, "endpoint", defaultEndpoint, "the daemon's CSI socket")
	f.StringVar(&o.volumeID, "volume-id", "", "volume ID (default: derived from --target)")
	f.StringVar(&o.target, "target", "", "directory where the maps are mounted (required)")
	f.DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long to wait for the daemon")
	cmd.MarkFlagRequired("target")
}

// resolve makes the target absolute and derives the volume ID from it, so
// that publish and unpublish of one target agree without a second flag.
func (o *clientOptions) resolve() error {
	abs, err := filepath.Abs(o.target)
	if err != nil {
		return err
	}
	o.target = abs
	if o.volumeID == "" {
		sum := sha256.Sum256([]byte(abs))
		o.volumeID = "local-" + hex.EncodeToString(sum[:8])
	}
	return nil
}

func (o *clientOptions) dial() (csi.NodeClient, func(), error) {
	path, err := driver.ParseEndpoint(o.endpoint)
	if err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat(path); err != nil {
		return nil, nil, fmt.Errorf("cannot reach the daemon at %s: %v (is `bpfmount serve` running?)", path, err)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return csi.NewNodeClient(conn), func() { conn.Close() }, nil
}

func newPublishCmd() *cobra.Command {
	o := &clientOptions{}
	var attrs []string
	var readOnly bool
	cmd := &cobra.Command{
		Use:   "publish --target DIR --attr image=REF --attr interface=IF [--attr key=value ...]",
		Short: "Load a program and mount its maps at a directory",
		Long: `Ask the daemon to publish a volume, exactly as kubelet does for a pod:
the attributes are the volume attributes (image, program, type, interface,
priority, proceedOn, direction, xdpMode, maps, globals, pullPolicy; README's
"Volume attributes" says what each means). Requests without pod information follow the policy's local
section.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.resolve(); err != nil {
				return err
			}
			vc := map[string]string{}
			for _, a := range attrs {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return fmt.Errorf("--attr %q: want key=value", a)
				}
				vc[k] = v
			}
			client, closeFn, err := o.dial()
			if err != nil {
				return err
			}
			defer closeFn()
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			_, err = client.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
				VolumeId:   o.volumeID,
				TargetPath: o.target,
				Readonly:   readOnly,
				VolumeCapability: &csi.VolumeCapability{
					AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
					AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
				},
				VolumeContext: vc,
			})
			if err != nil {
				return rpcError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published volume %s at %s\n", o.volumeID, o.target)
			return nil
		},
	}
	o.flags(cmd)
	cmd.Flags().StringArrayVar(&attrs, "attr", nil, "volume attribute key=value (repeatable)")
	cmd.Flags().BoolVar(&readOnly, "readonly", false, "expose the maps read-only")
	return cmd
}

func newUnpublishCmd() *cobra.Command {
	o := &clientOptions{}
	cmd := &cobra.Command{
		Use:   "unpublish --target DIR",
		Short: "Unmount a volume's maps and unload its program when no other volume shares it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.resolve(); err != nil {
				return err
			}
			client, closeFn, err := o.dial()
			if err != nil {
				return err
			}
			defer closeFn()
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			if _, err := client.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: o.volumeID, TargetPath: o.target}); err != nil {
				return rpcError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unpublished volume %s from %s\n", o.volumeID, o.target)
			return nil
		},
	}
	o.flags(cmd)
	return cmd
}

func rpcError(err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	return err
}

// listEntry is one line of `bpfmount list`.
type listEntry struct {
	Volume    string   `json:"volume"`
	Pod       string   `json:"pod,omitempty"`
	Program   string   `json:"program"`
	Hook      string   `json:"hook"`
	Interface string   `json:"interface"`
	Direction string   `json:"direction,omitempty"`
	Priority  int      `json:"priority"`
	ProgramID uint32   `json:"programID"`
	Digest    string   `json:"digest"`
	Maps      []string `json:"maps"`
	Target    string   `json:"target"`
	ReadOnly  bool     `json:"readOnly"`
}

func newListCmd() *cobra.Command {
	var stateDir, output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List published volumes and their programs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := os.Stat(filepath.Join(stateDir, "volumes")); err != nil {
				return fmt.Errorf("no volume records in %s: %v (is this the daemon's --state-dir?)", stateDir, err)
			}
			store, err := state.Open(stateDir)
			if err != nil {
				return err
			}
			recs, err := store.List()
			if err != nil {
				return err
			}
			entries := make([]listEntry, 0, len(recs))
			for _, r := range recs {
				e := listEntry{
					Volume: r.VolumeID, Program: r.Identity.Program, Hook: string(r.Identity.Hook),
					Interface: r.Identity.Interface, Direction: r.Identity.Direction, Priority: r.Identity.Priority,
					ProgramID: r.ProgramID, Digest: r.Identity.Digest, Maps: r.Maps, Target: r.TargetPath, ReadOnly: r.ReadOnly,
				}
				if r.Pod.Name != "" {
					e.Pod = r.Pod.Namespace + "/" + r.Pod.Name
				}
				entries = append(entries, e)
			}
			sort.Slice(entries, func(i, j int) bool { return entries[i].Volume < entries[j].Volume })
			out := cmd.OutOrStdout()
			switch output {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			case "", "table":
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VOLUME\tPOD\tPROGRAM\tHOOK\tINTERFACE\tPRIORITY\tID\tDIGEST\tMAPS")
				for _, e := range entries {
					hook := e.Hook
					if e.Direction != "" {
						hook += "/" + e.Direction
					}
					digest := e.Digest
					if len(digest) > 19 {
						digest = digest[:19]
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", e.Volume, orDash(e.Pod), e.Program, hook,
						e.Interface, e.Priority, e.ProgramID, digest, strings.Join(e.Maps, ","))
				}
				return tw.Flush()
			}
			return fmt.Errorf("-o %q: want table or json", output)
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultStateDir, "the daemon's state directory")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
