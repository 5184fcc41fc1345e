package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/bpfmount/bpfmount/driver/admin/adminapi"
	"github.com/bpfmount/bpfmount/internal/csiwire"
	"github.com/bpfmount/bpfmount/internal/endpoint"
	"github.com/bpfmount/bpfmount/internal/grpcwire"
)

// connOptions are the flags every client command has.
type connOptions struct {
	endpoint string
	timeout  time.Duration
}

func (o *connOptions) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.endpoint, "endpoint", endpoint.FromEnv(), "the daemon's CSI socket ($"+endpoint.EnvVar+" when set)")
	f.DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long to wait for the daemon")
}

// daemon is a connection to `bpfmount serve`. The client speaks gRPC
// itself (grpcwire, csiwire): linking grpc-go and the CSI spec package
// would cost every command their package initialisation at start.
type daemon struct {
	conn *grpcwire.Conn
	path string
}

func (o *connOptions) dial() (*daemon, error) {
	path, err := endpoint.Parse(o.endpoint)
	if err != nil {
		return nil, fmt.Errorf("--endpoint: %w", err)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("cannot reach the daemon at %s: %v (is `bpfmount serve` running? --endpoint names its socket)", path, err)
	}
	return &daemon{conn: grpcwire.Dial(path), path: path}, nil
}

func (d *daemon) Close() { d.conn.Close() }

// adminContentType carries the admin service's JSON messages.
const adminContentType = grpcwire.ContentTypeProto + "+" + adminapi.ContentSubtype

// volumes asks the daemon for the volumes it knows (req filters them and
// says whether to add what the programs cost now).
func (d *daemon) volumes(ctx context.Context, req *adminapi.ListVolumesRequest) ([]adminapi.Volume, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	out, err := d.conn.Invoke(ctx, adminapi.ListVolumesMethod, adminContentType, body)
	if grpcwire.CodeOf(err) == grpcwire.Unimplemented {
		return nil, fmt.Errorf("the daemon at %s cannot list volumes (it predates %s): upgrade it", d.path, adminapi.ListVolumesMethod)
	}
	if err != nil {
		return nil, rpcError(err)
	}
	var resp adminapi.ListVolumesResponse
	if err := json.Unmarshal(out, &resp); err != nil {
		return nil, rpcError(&grpcwire.Status{Code: grpcwire.Internal, Message: fmt.Sprintf(
			"the daemon at %s answered %s with a message this client cannot read: %v (are client and daemon the same version?)", d.path, adminapi.ListVolumesMethod, err)})
	}
	return resp.Volumes, nil
}

// publish and unpublish make the CSI calls; their responses carry nothing.
func (d *daemon) publish(ctx context.Context, req *csiwire.NodePublishVolumeRequest) error {
	_, err := d.conn.Invoke(ctx, csiwire.NodePublishVolumeMethod, grpcwire.ContentTypeProto, req.Marshal())
	return err
}

func (d *daemon) unpublish(ctx context.Context, req *csiwire.NodeUnpublishVolumeRequest) error {
	_, err := d.conn.Invoke(ctx, csiwire.NodeUnpublishVolumeMethod, grpcwire.ContentTypeProto, req.Marshal())
	return err
}

// targetOptions are publish's and unpublish's volume flags.
type targetOptions struct {
	connOptions
	volumeID string
	target   string
}

func (o *targetOptions) flags(cmd *cobra.Command, idHelp string) {
	o.connOptions.flags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.volumeID, "volume-id", "", idHelp)
	f.StringVar(&o.target, "target", "", "directory where the maps are mounted (required)")
	cmd.MarkFlagRequired("target")
}

// absTarget makes --target absolute and clean, as the daemon records it.
func (o *targetOptions) absTarget() error {
	abs, err := filepath.Abs(o.target)
	if err != nil {
		return fmt.Errorf("--target %q: %w", o.target, err)
	}
	o.target = abs
	return nil
}

// resolveParent follows symlinks in target's parent directory (such as
// /var/run -> /run), so the daemon gets, and records, the real path: it
// does not follow links on its own. A parent that does not exist is left
// as it is.
func resolveParent(target string) string {
	dir, err := filepath.EvalSymlinks(filepath.Dir(target))
	if err != nil {
		return target
	}
	return filepath.Join(dir, filepath.Base(target))
}

// derivedVolumeID is publish's volume ID when none is given: the same
// target always gets the same ID.
func derivedVolumeID(target string) string {
	sum := sha256.Sum256([]byte(target))
	return "local-" + hex.EncodeToString(sum[:8])
}

func newPublishCmd() *cobra.Command {
	o := &targetOptions{}
	var attrs []string
	var readOnly bool
	cmd := &cobra.Command{
		Use:   "publish --target DIR --attr image=REF --attr interface=IF [--attr key=value ...]",
		Short: "Load a program and mount its maps at a directory",
		Long: `Ask the daemon to publish a volume, exactly as kubelet does for a pod.
The --attr pairs are the volume attributes a pod's inline volume carries
(image, program, type, interface, priority, proceedOn, direction, xdpMode,
maps, globals, pullPolicy; README.md's "Volume attributes" describes each).
Requests without pod information follow the policy's local section.

The target's missing parent directories are created (mode 0755); the target
itself is made by the daemon. Unpublish with the same --target.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.absTarget(); err != nil {
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
			d, err := o.dial()
			if err != nil {
				return err
			}
			defer d.Close()
			created, err := mkdirParents(filepath.Dir(o.target))
			if err != nil {
				return err
			}
			o.target = resolveParent(o.target)
			if o.volumeID == "" {
				o.volumeID = derivedVolumeID(o.target)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			err = d.publish(ctx, &csiwire.NodePublishVolumeRequest{
				VolumeID:      o.volumeID,
				TargetPath:    o.target,
				AccessMode:    csiwire.AccessModeSingleNodeWriter, // a mount volume
				Readonly:      readOnly,
				VolumeContext: vc,
			})
			if err != nil {
				removeCreated(created) // a failed publish leaves nothing behind
				return rpcError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published volume %s at %s\n", o.volumeID, o.target)
			return nil
		},
	}
	o.flags(cmd, "volume ID (default: derived from --target)")
	cmd.Flags().StringArrayVar(&attrs, "attr", nil, "volume attribute key=value (repeatable)")
	cmd.Flags().BoolVar(&readOnly, "readonly", false, "expose the maps read-only")
	return cmd
}

// mkdirParents creates dir and its missing parents with mode 0755, and
// returns the ones it created, deepest last.
func mkdirParents(dir string) ([]string, error) {
	var missing []string
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("--target's parent %s: %w", dir, err)
		}
		missing = append(missing, p)
		if p == filepath.Dir(p) {
			break
		}
	}
	var created []string
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			removeCreated(created)
			return nil, fmt.Errorf("creating --target's parent directory: %w", err)
		}
		// Mkdir's mode is cut by the umask; the documented mode is 0755.
		if err := os.Chmod(missing[i], 0o755); err != nil {
			removeCreated(append(created, missing[i]))
			return nil, fmt.Errorf("creating --target's parent directory: %w", err)
		}
		created = append(created, missing[i])
	}
	return created, nil
}

// removeCreated removes directories mkdirParents made, deepest first, as
// long as they are empty.
func removeCreated(dirs []string) {
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
}

func newUnpublishCmd() *cobra.Command {
	o := &targetOptions{}
	cmd := &cobra.Command{
		Use:   "unpublish --target DIR [--volume-id ID]",
		Short: "Unmount a volume's maps and unload its program when no other volume shares it",
		Long: `Ask the daemon to unpublish the volume mounted at --target. Without
--volume-id the daemon's list of volumes names the volume at that target,
so a volume published with any --volume-id is found; a target where no
volume is published is an error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.absTarget(); err != nil {
				return err
			}
			d, err := o.dial()
			if err != nil {
				return err
			}
			defer d.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			if o.volumeID == "" {
				// Only the volumes at the target, without usage: the
				// daemon looks up no program for this. A daemon predating
				// the filter returns every volume, so volumeAt still picks.
				parent := resolveParent(o.target)
				vols, err := d.volumes(ctx, &adminapi.ListVolumesRequest{Targets: []string{o.target, parent}, Usage: new(bool)})
				if err != nil {
					return err
				}
				v, ok := volumeAt(vols, o.target)
				if !ok {
					v, ok = volumeAt(vols, parent)
				}
				if !ok {
					return fmt.Errorf("no volume is published at %s (`bpfmount list` shows the targets there are)", o.target)
				}
				// The daemon's own spelling of the target, the one it recorded.
				o.volumeID, o.target = v.VolumeID, v.Target
			}
			if err := d.unpublish(ctx, &csiwire.NodeUnpublishVolumeRequest{VolumeID: o.volumeID, TargetPath: o.target}); err != nil {
				return rpcError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unpublished volume %s from %s\n", o.volumeID, o.target)
			return nil
		},
	}
	o.flags(cmd, "volume ID (default: the volume the daemon has at --target)")
	return cmd
}

// volumeAt finds the volume published at target (absolute and clean).
func volumeAt(vols []adminapi.Volume, target string) (adminapi.Volume, bool) {
	for _, v := range vols {
		if filepath.Clean(v.Target) == target {
			return v, true
		}
	}
	return adminapi.Volume{}, false
}

// rpcError is a failed call's error as the user sees it: the status
// code's name, then the daemon's message.
func rpcError(err error) error {
	var st *grpcwire.Status
	if errors.As(err, &st) {
		return fmt.Errorf("%s: %s", st.Code, st.Message)
	}
	return err
}

func newListCmd() *cobra.Command {
	o := &connOptions{}
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List published volumes and their programs",
		Long: `Ask the daemon for every volume it has published. -o wide adds the program
ID, image, digest, maps and read-only, and what the program costs now: how
many times it ran and its average run time (from the kernel's run-time
statistics, which the daemon keeps enabled unless --program-stats=false; a
program shared by several volumes shows the same totals on each), and the
memory of its maps ("~" when estimated from their sizes). "-" means not
known. -o json prints every field the daemon returns.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "wide" && output != "json" {
				return fmt.Errorf("-o %q: want table, wide or json", output)
			}
			d, err := o.dial()
			if err != nil {
				return err
			}
			defer d.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			// The plain table shows no usage: only wide and json ask
			// the daemon for it (a kernel query per program).
			usage := output != "table"
			vols, err := d.volumes(ctx, &adminapi.ListVolumesRequest{Usage: &usage})
			if err != nil {
				return err
			}
			return printVolumes(cmd.OutOrStdout(), output, vols)
		},
	}
	o.flags(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, wide or json")
	return cmd
}

func printVolumes(out io.Writer, format string, vols []adminapi.Volume) error {
	if format == "json" {
		if vols == nil {
			vols = []adminapi.Volume{}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(vols)
	}
	wide := format == "wide"
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	header := "VOLUME\tPOD\tPROGRAM\tHOOK\tINTERFACE\tPRIORITY\tTARGET"
	if wide {
		header += "\tPROGRAM ID\tIMAGE\tDIGEST\tMAPS\tREAD-ONLY\tRUNS\tAVG RUN\tMAP MEMORY"
	}
	fmt.Fprintln(tw, header)
	for _, v := range vols {
		pod := "-"
		if v.PodName != "" {
			pod = v.PodNamespace + "/" + v.PodName
		}
		hook := v.Hook
		if v.Direction != "" {
			hook += "/" + v.Direction
		}
		if v.AttachTo != "" {
			hook += "/" + v.AttachTo
		}
		where := v.Interface
		if v.Cgroup != "" {
			where = "cgroup:" + v.Cgroup // a cgroup hook attaches to no interface
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s", cell(v.VolumeID), cell(pod), cell(v.Program), cell(hook), cell(where), v.Priority, cell(v.Target))
		if wide {
			digest := v.Digest
			if len(digest) > 19 { // "sha256:" and 12 hex digits
				digest = digest[:19]
			}
			maps := strings.Join(v.Maps, ",")
			if maps == "" {
				maps = "-"
			}
			fmt.Fprintf(tw, "\t%d\t%s\t%s\t%s\t%t", v.ProgramID, cell(v.Image), cell(digest), cell(maps), v.ReadOnly)
			runs, avg := runColumns(v)
			fmt.Fprintf(tw, "\t%s\t%s\t%s", runs, avg, memoryColumn(v))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// runColumns are the run count and average run time of v's program, "-"
// when the daemon does not know them.
func runColumns(v adminapi.Volume) (runs, avg string) {
	if v.RunCount == nil {
		return "-", "-"
	}
	runs = strconv.FormatUint(*v.RunCount, 10)
	if *v.RunCount == 0 || v.RunTimeNs == nil {
		return runs, "-"
	}
	return runs, time.Duration(*v.RunTimeNs / *v.RunCount).String()
}

// memoryColumn is the memory of v's maps in binary units, "~" before an
// estimate.
func memoryColumn(v adminapi.Volume) string {
	if v.MapBytes == nil {
		return "-"
	}
	s := binaryBytes(*v.MapBytes)
	if v.MapBytesEstimated {
		s = "~" + s
	}
	return s
}

func binaryBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + "B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// cell keeps a table cell on its line and in its column: names can come
// from a pod author, so control characters (tabs, newlines, escapes) are
// shown as '?'.
func cell(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}
