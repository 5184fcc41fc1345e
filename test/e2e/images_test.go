package e2e

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
	pauseImage    = "bpfmount-e2e.local/pause:1"
	driverRepo    = "bpfmount-e2e.local/bpfmount"
	readerImage   = "bpfmount-e2e.local/xdp-counter-reader:e2e"
	bytecodeDir   = "/var/lib/bpfmount/bytecode"
	counterLayout = bytecodeDir + "/xdp-counter"
	seqLayout     = bytecodeDir + "/xdp-seq"
)

// goBuild builds a static binary of pkg (relative to dir) into out.
func goBuild(dir, pkg, out string, ldflags string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w "+ldflags, "-o", out, pkg)
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

func (c *cluster) importImage(ref string, entrypoint []string, user string, files ...file) error {
	tarPath := filepath.Join(c.work, "image.tar")
	if err := image(ref, tarPath, entrypoint, user, files...); err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	defer os.Remove(tarPath)
	return c.ctr("images", "import", tarPath)
}

// bytecodeLayouts writes the example XDP counter and the xdp_seq test
// program as local OCI layouts where the chart mounts localBytecodeDir.
func (c *cluster) bytecodeLayouts(repo string) error {
	bpfmount := filepath.Join(c.bin, "bpfmount")
	for _, l := range [][2]string{
		{counterLayout, filepath.Join(repo, "deploy/examples/xdp-counter/bpf/xdpcounter_bpfel.o")},
		{seqLayout, filepath.Join(repo, "test/programs/xdpseq_bpfel.o")},
	} {
		if out, err := exec.Command(bpfmount, "image", "build", "-o", l[0], "--tag", "v1", l[1]).CombinedOutput(); err != nil {
			return fmt.Errorf("bpfmount image build %s: %v\n%s", l[1], err, out)
		}
	}
	return nil
}
