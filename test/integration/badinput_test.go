package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// TestHostileInput sends requests that are wrong in every way we know of.
// Each must fail with the right code and a message that names the problem,
// and leave nothing behind: no record, intent, pin, mount, target directory
// or attached program.
func TestHostileInput(t *testing.T) {
	d, v, xdp, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	tcx := testenv.Layout(t, testenv.TCXOrderObject, "v1")
	target := filepath.Join(dir, "vol")
	obj, err := os.ReadFile(testenv.RepoPath(testenv.XDPCounterObject))
	if err != nil {
		t.Fatal(err)
	}
	lying := handmadeLayout(t, map[string]string{bytecode.LabelPrograms: `{"ghost":"xdp"}`}, layerWith("x.o", obj))
	twoLayers := handmadeLayout(t, map[string]string{bytecode.LabelPrograms: `{"xdp_stats":"xdp"}`}, layerWith("x.o", obj), layerWith("y.o", obj))
	notELF := handmadeLayout(t, map[string]string{bytecode.LabelPrograms: `{"xdp_stats":"xdp"}`}, layerWith("x.o", []byte("#!/bin/sh\necho pwned\n")))
	noLabels := handmadeLayout(t, nil, layerWith("x.o", obj))
	badJSON := handmadeLayout(t, map[string]string{bytecode.LabelPrograms: `{"xdp_stats":`}, layerWith("x.o", obj))
	lyingMap := handmadeLayout(t, map[string]string{bytecode.LabelPrograms: `{"xdp_stats":"xdp"}`, bytecode.LabelMaps: `{"secret_map":"hash"}`}, layerWith("x.o", obj))
	wrongType := handmadeLayout(t, map[string]string{bytecode.LabelPrograms: `{"xdp_stats":"raw_tracepoint"}`}, layerWith("x.o", obj))
	kprobeLabel := handmadeLayout(t, map[string]string{bytecode.LabelPrograms: `{"xdp_stats":"kprobe"}`}, layerWith("x.o", obj))

	good := func() map[string]string { return map[string]string{"image": xdp, "interface": v.Host} }
	with := func(kv ...string) map[string]string {
		a := good()
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "\x00delete" {
				delete(a, kv[i])
			} else {
				a[kv[i]] = kv[i+1]
			}
		}
		return a
	}
	long := strings.Repeat("a", 5000)
	manyKeys := func(n int) map[string]string {
		a := with("csi.storage.k8s.io/pod.namespace", "web")
		for i := range n {
			a[fmt.Sprintf("csi.storage.k8s.io/extra-%d", i)] = "x"
		}
		return a
	}

	type tc struct {
		name     string
		vol      string
		target   string
		attrs    map[string]string
		edit     func(*csi.NodePublishVolumeRequest)
		code     codes.Code
		fragment string
	}
	cases := []tc{
		// The request's own fields.
		{name: "no volume id", vol: "", code: codes.InvalidArgument, fragment: "volume_id is required"},
		{name: "volume id traversal", vol: "../../etc", code: codes.InvalidArgument, fragment: "not a safe name"},
		{name: "volume id slash", vol: "a/b", code: codes.InvalidArgument, fragment: "not a safe name"},
		{name: "volume id dotdot", vol: "..", code: codes.InvalidArgument, fragment: "not a safe name"},
		{name: "volume id embedded dotdot", vol: "a..b", code: codes.InvalidArgument, fragment: "not a safe name"},
		{name: "volume id NUL", vol: "a\x00b", code: codes.InvalidArgument, fragment: "not a safe name"},
		{name: "volume id too long", vol: strings.Repeat("v", 200), code: codes.InvalidArgument, fragment: "not a safe name"},
		{name: "volume id look-alike", vol: "v\u043el", code: codes.InvalidArgument, fragment: "not a safe name"},
		{name: "volume id leading dash", vol: "-rf", code: codes.InvalidArgument, fragment: "not a safe name"},
		{name: "no target", target: "\x00empty", code: codes.InvalidArgument, fragment: "target_path is required"},
		{name: "relative target", target: "rel/vol", code: codes.InvalidArgument, fragment: "absolute, clean"},
		{name: "root target", target: "/", code: codes.InvalidArgument, fragment: "other than /"},
		{name: "unclean target", target: dir + "/x/../vol", code: codes.InvalidArgument, fragment: "absolute, clean"},
		{name: "target NUL", target: dir + "/v\x00ol", code: codes.InvalidArgument, fragment: "NUL"},
		{name: "target too long", target: "/" + strings.Repeat("a/", 2100), code: codes.InvalidArgument, fragment: "too long"},
		{name: "target in state dir", target: filepath.Join(d.StateDir, "volumes", "x"), code: codes.InvalidArgument, fragment: "overlaps the driver's own directory"},
		{name: "target in bpffs root", target: filepath.Join(d.BPFFSRoot, "programs"), code: codes.InvalidArgument, fragment: "overlaps"},
		{name: "target above state dir", target: filepath.Dir(d.StateDir), code: codes.InvalidArgument, fragment: "overlaps"},
		{name: "no capability", edit: func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }, code: codes.InvalidArgument, fragment: "volume_capability is required"},
		{name: "block capability", edit: func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}, code: codes.InvalidArgument, fragment: "block volumes are not supported"},
		{name: "fsType", edit: func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().FsType = "ext4" }, code: codes.InvalidArgument, fragment: "fsType"},
		{name: "mount flags", edit: func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().MountFlags = []string{"exec"} }, code: codes.InvalidArgument, fragment: "mount flags"},
		{name: "multi-node access", edit: func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		}, code: codes.InvalidArgument, fragment: "SINGLE_NODE"},
		{name: "no access mode", edit: func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.AccessMode = nil }, code: codes.InvalidArgument, fragment: "access_mode is required"},
		{name: "mount group not numeric", edit: func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().VolumeMountGroup = "wheel" }, code: codes.InvalidArgument, fragment: "numeric group"},
		{name: "mount group negative", edit: func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().VolumeMountGroup = "-1" }, code: codes.InvalidArgument, fragment: "numeric group"},
		{name: "secret of wrong type", edit: func(r *csi.NodePublishVolumeRequest) { r.Secrets = map[string]string{"password": "hunter2"} }, code: codes.InvalidArgument, fragment: "dockerconfigjson"},

		// Attributes, checked before anything is fetched.
		{name: "no image", attrs: with("image", "\x00delete"), code: codes.InvalidArgument, fragment: `"image" is required`},
		{name: "empty image", attrs: with("image", ""), code: codes.InvalidArgument, fragment: `"image" is required`},
		{name: "no interface", attrs: with("interface", "\x00delete"), code: codes.InvalidArgument, fragment: `"interface" is required`},
		{name: "unknown key", attrs: with("foo", "bar"), code: codes.InvalidArgument, fragment: `unknown volume attribute "foo"`},
		{name: "wrong case key", attrs: with("Priority", "5"), code: codes.InvalidArgument, fragment: `did you mean "priority"`},
		{name: "look-alike key", attrs: with("im\u0430ge", xdp), code: codes.InvalidArgument, fragment: "unknown volume attribute"},
		{name: "program injection", attrs: with("program", "x;rm -rf /"), code: codes.InvalidArgument, fragment: "not a program"},
		{name: "program path", attrs: with("program", "../x"), code: codes.InvalidArgument, fragment: "not a program"},
		{name: "type unknown", attrs: with("type", "raw_tracepoint"), code: codes.InvalidArgument, fragment: "not a supported type"},
		{name: "priority zero", attrs: with("priority", "0"), code: codes.InvalidArgument, fragment: "out of range"},
		{name: "priority too high", attrs: with("priority", "1001"), code: codes.InvalidArgument, fragment: "out of range"},
		{name: "priority word", attrs: with("priority", "high"), code: codes.InvalidArgument, fragment: "not a number"},
		{name: "priority negative", attrs: with("priority", "-5"), code: codes.InvalidArgument, fragment: "not a number"},
		{name: "priority plus", attrs: with("priority", "+5"), code: codes.InvalidArgument, fragment: "not a number"},
		{name: "priority space", attrs: with("priority", " 5"), code: codes.InvalidArgument, fragment: "not a number"},
		{name: "priority huge", attrs: with("priority", "99999999999999999999"), code: codes.InvalidArgument, fragment: "not a number"},
		{name: "direction unknown", attrs: with("type", "tcx", "direction", "sideways"), code: codes.InvalidArgument, fragment: "not a direction"},
		{name: "xdpMode unknown", attrs: with("xdpMode", "turbo"), code: codes.InvalidArgument, fragment: "not an XDP mode"},
		{name: "proceedOn empty entry", attrs: with("proceedOn", "pass,,drop"), code: codes.InvalidArgument, fragment: "empty entry"},
		{name: "proceedOn unknown", attrs: with("proceedOn", "fly"), code: codes.InvalidArgument, fragment: "not an action"},
		{name: "proceedOn tc action on xdp", attrs: with("type", "xdp", "proceedOn", "pipe"), code: codes.InvalidArgument, fragment: "not a xdp action"},
		{name: "proceedOn on tcx", attrs: with("type", "tcx", "direction", "ingress", "proceedOn", "pass"), code: codes.InvalidArgument, fragment: "TCX_NEXT"},
		{name: "proceedOn too long", attrs: with("proceedOn", strings.TrimSuffix(strings.Repeat("pass,", 65), ",")), code: codes.InvalidArgument, fragment: "more than 64"},
		{name: "direction on xdp", attrs: with("type", "xdp", "direction", "ingress"), code: codes.InvalidArgument, fragment: "applies to tc and tcx"},
		{name: "tcx without direction", attrs: with("type", "tcx"), code: codes.InvalidArgument, fragment: `"direction" is required`},
		{name: "xdpMode on tcx", attrs: with("type", "tcx", "direction", "egress", "xdpMode", "skb"), code: codes.InvalidArgument, fragment: "applies to xdp"},
		{name: "maps bad name", attrs: with("maps", "a b"), code: codes.InvalidArgument, fragment: "not a map name"},
		{name: "maps traversal", attrs: with("maps", "../../etc/passwd"), code: codes.InvalidArgument, fragment: "not a map name"},
		{name: "maps twice", attrs: with("maps", "xdp_stats_map,xdp_stats_map"), code: codes.InvalidArgument, fragment: "twice"},
		{name: "globals no value", attrs: with("globals", "x"), code: codes.InvalidArgument, fragment: "NAME=HEX"},
		{name: "globals not hex", attrs: with("globals", "x=zz"), code: codes.InvalidArgument, fragment: "hex digits"},
		{name: "globals odd", attrs: with("globals", "x=123"), code: codes.InvalidArgument, fragment: "hex digits"},
		{name: "globals twice", attrs: with("globals", "a=00,a=01"), code: codes.InvalidArgument, fragment: "set twice"},
		{name: "globals oversized", attrs: with("globals", "a="+strings.Repeat("00", 5000)), code: codes.InvalidArgument, fragment: "more than the 4096"},
		{name: "pull policy", attrs: with("pullPolicy", "Sometimes"), code: codes.InvalidArgument, fragment: "not a pull policy"},
		{name: "image NUL", attrs: with("image", "oci:/tmp/x\x00y"), code: codes.InvalidArgument, fragment: "control or non-ASCII"},
		{name: "image newline", attrs: with("image", "oci:/tmp/x\nInjected: log line"), code: codes.InvalidArgument, fragment: "control or non-ASCII"},
		{name: "image too long", attrs: with("image", "r.example/"+long), code: codes.InvalidArgument, fragment: "more than the 1024"},
		{name: "interface look-alike", attrs: with("interface", "\u0435th0"), code: codes.InvalidArgument, fragment: "non-ASCII"},
		{name: "interface too long", attrs: with("interface", "abcdefghijklmnop"), code: codes.InvalidArgument, fragment: "not an interface name"},
		{name: "interface slash", attrs: with("interface", "a/b"), code: codes.InvalidArgument, fragment: "not an interface name"},
		{name: "interface dotdot", attrs: with("interface", ".."), code: codes.InvalidArgument, fragment: "not an interface name"},
		{name: "kubelet key control char", attrs: with("csi.storage.k8s.io/pod.name", "p\x1b[31m"), code: codes.InvalidArgument, fragment: "control"},
		{name: "half a pod's request", attrs: with("csi.storage.k8s.io/pod.name", "p", "csi.storage.k8s.io/pod.uid", "u", "csi.storage.k8s.io/ephemeral", "true"), code: codes.InvalidArgument, fragment: "must name its namespace"},
		{name: "too many kubelet keys", attrs: manyKeys(1000), code: codes.InvalidArgument, fragment: "more than the 64 allowed"},
		{name: "volume context too large", attrs: with("csi.storage.k8s.io/pod.namespace", "web", "csi.storage.k8s.io/pod.name", long[:4000],
			"csi.storage.k8s.io/pod.uid", long[:4000], "csi.storage.k8s.io/serviceAccount.name", long[:4000], "csi.storage.k8s.io/x", long[:4000], "program", long[:1000]),
			code: codes.InvalidArgument, fragment: "more than the 16384 allowed"},
		// Policy comes before any file or registry is touched: a denied pod
		// naming a missing layout is denied, not told the layout is missing.
		{name: "denied pod, missing layout", attrs: with("csi.storage.k8s.io/pod.namespace", "web", "image", "oci:/nonexistent/layout:v1"), code: codes.PermissionDenied, fragment: "no policy"},
		{name: "oci relative path", attrs: with("image", "oci:layouts/x:v1"), code: codes.InvalidArgument, fragment: "absolute and clean"},
		{name: "oci unclean path", attrs: with("image", "oci:/tmp/../etc:v1"), code: codes.InvalidArgument, fragment: "absolute and clean"},
		{name: "oci empty tag", attrs: with("image", "oci:/tmp/x:"), code: codes.InvalidArgument, fragment: "empty tag"},

		// Problems found once the node is consulted.
		{name: "interface missing", attrs: with("interface", "nope0"), code: codes.NotFound, fragment: `interface "nope0" not found on node "test-node"`},
		{name: "oci layout missing", attrs: with("image", "oci:/nonexistent/layout:v1"), code: codes.NotFound, fragment: "no OCI layout"},
		{name: "oci tag missing", attrs: with("image", strings.TrimSuffix(xdp, ":v1")+":v2"), code: codes.NotFound, fragment: `no image tagged "v2"`},
		{name: "program not in image", attrs: with("program", "nope"), code: codes.InvalidArgument, fragment: "(it holds: xdp_stats)"},
		{name: "map not in image", attrs: with("maps", "nope"), code: codes.InvalidArgument, fragment: `map "nope" not in image`},
		{name: "global not in object", attrs: with("globals", "nope=00"), code: codes.InvalidArgument, fragment: `global "nope" not in`},
		{name: "global wrong size", attrs: map[string]string{"image": tcx, "interface": v.Host, "direction": "ingress", "globals": "order_id=01"}, code: codes.InvalidArgument, fragment: "is 4 bytes"},
		{name: "xdp program as tcx", attrs: with("type", "tcx", "direction", "ingress"), code: codes.InvalidArgument, fragment: "cannot attach to hook"},
		{name: "tc program without direction", attrs: map[string]string{"image": tcx, "interface": v.Host}, code: codes.InvalidArgument, fragment: "needs direction"},
		{name: "image lies about program", attrs: with("image", lying), code: codes.InvalidArgument, fragment: `no such function`},
		{name: "image lies about maps", attrs: with("image", lyingMap), code: codes.InvalidArgument, fragment: `map "secret_map"`},
		{name: "image has two layers", attrs: with("image", twoLayers), code: codes.InvalidArgument, fragment: "has 2 layers"},
		{name: "image is not ELF", attrs: with("image", notELF), code: codes.InvalidArgument, fragment: "not an ELF object"},
		{name: "image has no labels", attrs: with("image", noLabels), code: codes.InvalidArgument, fragment: "no bytecode labels"},
		{name: "image labels not JSON", attrs: with("image", badJSON), code: codes.InvalidArgument, fragment: "not a JSON object"},
		{name: "image type unsupported", attrs: with("image", wrongType), code: codes.InvalidArgument, fragment: `type "raw_tracepoint"`},
		{name: "image type mismatch", attrs: with("image", kprobeLabel), code: codes.InvalidArgument, fragment: `is a XDP program; it cannot attach to hook "kprobe"`},
		// Lifetimes (this daemon's policy sets no keepAttached cap: 0s).
		{name: "keepAttached negative", attrs: with("keepAttached", "-5s"), code: codes.InvalidArgument, fragment: `"keepAttached": "-5s" is not a duration`},
		{name: "keepAttached not a duration", attrs: with("keepAttached", "forever"), code: codes.InvalidArgument, fragment: `"keepAttached": "forever" is not a duration`},
		{name: "keepAttached over the cap", attrs: with("keepAttached", "30s"), code: codes.InvalidArgument, fragment: `"keepAttached": 30s is over this node's cap of 0s`},
		{name: "name upper case", attrs: with("name", "Firewall"), code: codes.InvalidArgument, fragment: `"name": "Firewall" is not a DNS label`},
		{name: "name too long", attrs: with("name", strings.Repeat("a", 64)), code: codes.InvalidArgument, fragment: `is not a DNS label`},
		{name: "name path", attrs: with("name", "../fw"), code: codes.InvalidArgument, fragment: `"name": "../fw" is not a DNS label`},
		{name: "from with image", attrs: with("from", "fw"), code: codes.InvalidArgument, fragment: `cannot be used with "from": a volume either loads or reads`},
		{name: "from not a name", attrs: map[string]string{"from": "../../maps"}, code: codes.InvalidArgument, fragment: `"from": "../../maps" is not a DNS label`},
	}
	if len(cases) < 60 {
		t.Fatalf("only %d hostile cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vol := c.vol
			if vol == "" && c.name != "no volume id" {
				vol = "vol-hostile"
			}
			tgt := c.target
			switch tgt {
			case "":
				tgt = target
			case "\x00empty":
				tgt = ""
			}
			attrs := c.attrs
			if attrs == nil {
				attrs = good()
			}
			req := publishReq(vol, tgt, attrs, false)
			if c.edit != nil {
				c.edit(req)
			}
			_, err := d.Node.NodePublishVolume(context.Background(), req)
			if status.Code(err) != c.code {
				t.Fatalf("got %v, want %s", err, c.code)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, c.fragment) {
				t.Fatalf("message %q does not contain %q", msg, c.fragment)
			}
			d.AssertClean(t, v, target)
		})
	}
}

func layerWith(name string, content []byte) v1.Layer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
	tw.Write(content)
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		panic(err)
	}
	return l
}

// handmadeLayout writes an image assembled by hand, so it can break the
// format in ways bytecode.Build never would.
func handmadeLayout(t *testing.T, labels map[string]string, layers ...v1.Layer) string {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.Config.Labels = labels
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := bytecode.WriteLayout(dir, "v1", img); err != nil {
		t.Fatal(err)
	}
	return "oci:" + dir + ":v1"
}
