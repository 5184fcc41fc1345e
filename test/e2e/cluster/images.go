package cluster

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The driver and reader images are the release images `make image` builds
// from the Dockerfile; the pause image is made here from a static binary.
// All are imported into the test's containerd; pods use imagePullPolicy
// Never.
const (
	PauseImage    = "bpfmount-e2e.local/pause:1"
	DriverRepo    = "bpfmount-e2e.local/bpfmount"
	ReaderImage   = "bpfmount-e2e.local/xdp-counter-reader:e2e"
	BytecodeDir   = "/var/lib/bpfmount/bytecode"
	CounterLayout = BytecodeDir + "/xdp-counter"
	SeqLayout     = BytecodeDir + "/xdp-seq"

	// The exec-events example (a tracepoint and its ring buffer reader)
	// and the cgroup hooks test programs (count_skb among them).
	ExecReaderImage  = "bpfmount-e2e.local/exec-events-reader:e2e"
	ExecEventsLayout = BytecodeDir + "/exec-events"
	CgroupLayout     = BytecodeDir + "/cgroup-hooks"

	// The uprobe test's probed binary (test/e2e/uprobetarget, its symbols
	// kept: the probe finds main.tick in them) and the tracing hooks test
	// programs (count_uprobe among them).
	UprobeImage  = "bpfmount-e2e.local/uprobe-target:1"
	UprobeBinary = "/uprobe-target"
	TraceLayout  = BytecodeDir + "/trace-count"
)

// goBuild builds a static binary of pkg (relative to dir) into out.
func goBuild(dir, pkg, out string, ldflags string) error {
	return goBuildFlags(dir, pkg, out, "-s -w "+ldflags)
}

// goBuildFlags is goBuild with exactly these linker flags.
func goBuildFlags(dir, pkg, out string, ldflags string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

type file struct {
	path string // in the image
	src  string // on the host
}

// image makes a one-layer image of files with an entrypoint and writes it
// as a docker-archive tarball that `ctr images import` reads.
func image(ref, out string, entrypoint []string, user string, files ...file) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: f.path[1:], Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = v1.Config{Entrypoint: entrypoint, User: user}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(out, tag, img)
}

// BuildHostTools builds the static binaries the cluster runs on the host
// into Bin: bpfmount (for `image build`), the pause container's binary and
// the uprobe test's target (with its symbol table). repo is the
// repository's root.
func (c *Cluster) BuildHostTools(repo string) error {
	for n, b := range map[string][2]string{
		"bpfmount": {repo, "./cmd/bpfmount"},
		"pause":    {filepath.Join(repo, "test", "e2e"), "./pause"},
	} {
		if err := goBuild(b[0], b[1], filepath.Join(c.Bin, n), ""); err != nil {
			return err
		}
	}
	return goBuildFlags(filepath.Join(repo, "test", "e2e"), "./uprobetarget", filepath.Join(c.Bin, "uprobe-target"), "")
}

// ReleaseImage is an image `make image` built from the Dockerfile.
type ReleaseImage struct {
	Archive string   // OCI archive
	Built   string   // the name inside it
	Tags    []string // the names the cluster's pods and chart use
}

// ReleaseImages are the driver and reader images `make image` wrote to dir
// for version. The driver image is tagged v1 and v2, so that an upgrade
// rolls the DaemonSet to a new pod of the released image.
func ReleaseImages(dir, version string) []ReleaseImage {
	return []ReleaseImage{
		{filepath.Join(dir, "bpfmount-"+version+".tar"), "bpfmount/bpfmount:" + version, []string{DriverRepo + ":v1", DriverRepo + ":v2"}},
		{filepath.Join(dir, "xdp-counter-reader-"+version+".tar"), "bpfmount/xdp-counter-reader:" + version, []string{ReaderImage}},
		{filepath.Join(dir, "exec-events-reader-"+version+".tar"), "bpfmount/exec-events-reader:" + version, []string{ExecReaderImage}},
	}
}

// CheckReleaseImages says which archive is missing, and how to make it.
func CheckReleaseImages(imgs []ReleaseImage) error {
	for _, a := range imgs {
		if _, err := os.Stat(a.Archive); err != nil {
			return fmt.Errorf("release image %s: %v (build it with `make image`, with the same VERSION)", a.Archive, err)
		}
	}
	return nil
}

// LoadImages imports the pause image (made from Bin/pause) and the release
// images into the cluster's containerd, under the names pods use (they
// never pull).
func (c *Cluster) LoadImages(imgs []ReleaseImage) error {
	if err := c.importImage(PauseImage, []string{"/pause"}, "65535:65535", file{path: "/pause", src: filepath.Join(c.Bin, "pause")}); err != nil {
		return err
	}
	if err := c.importImage(UprobeImage, []string{UprobeBinary}, "65534:65534", file{path: UprobeBinary, src: filepath.Join(c.Bin, "uprobe-target")}); err != nil {
		return err
	}
	for _, a := range imgs {
		if err := c.Ctr("images", "import", a.Archive); err != nil {
			return err
		}
		for _, t := range a.Tags {
			if err := c.Ctr("images", "tag", "--force", a.Built, t); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *Cluster) importImage(ref string, entrypoint []string, user string, files ...file) error {
	tarPath := filepath.Join(c.Work, "image.tar")
	if err := image(ref, tarPath, entrypoint, user, files...); err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	defer os.Remove(tarPath)
	return c.Ctr("images", "import", tarPath)
}

// BytecodeLayouts writes the example XDP counter, the xdp_seq test
// program, the exec-events example, the cgroup and tracing hooks test
// programs as
// local OCI layouts where the chart mounts localBytecodeDir,
// with Bin/bpfmount (BuildHostTools).
func (c *Cluster) BytecodeLayouts(repo string) error {
	bpfmount := filepath.Join(c.Bin, "bpfmount")
	for _, l := range [][2]string{
		{CounterLayout, filepath.Join(repo, "deploy/examples/xdp-counter/bpf/xdpcounter_bpfel.o")},
		{SeqLayout, filepath.Join(repo, "test/programs/xdpseq_bpfel.o")},
		{ExecEventsLayout, filepath.Join(repo, "deploy/examples/exec-events/bpf/execevents_bpfel.o")},
		{CgroupLayout, filepath.Join(repo, "test/programs/cgrouphooks_bpfel.o")},
		{TraceLayout, filepath.Join(repo, "test/programs/tracecount_bpfel.o")},
	} {
		if out, err := exec.Command(bpfmount, "image", "build", "-o", l[0], "--tag", "v1", l[1]).CombinedOutput(); err != nil {
			return fmt.Errorf("bpfmount image build %s: %v\n%s", l[1], err, out)
		}
	}
	return nil
}
