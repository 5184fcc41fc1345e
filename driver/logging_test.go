package driver

import (
	"context"
	"flag"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

func logLines(t *testing.T, logs string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// At the default verbosity a publish and an unpublish log one line each,
// the audit line, which names the volume, its target, the pod and the
// program; at -v=4 the request and the call's duration are logged too.
func TestOneLogLinePerCall(t *testing.T) {
	buf := captureLogs(t)
	f := newTestDriver(t, mustPolicy(t, `rules:
- name: web
  namespaces: ["web"]
  images: ["registry.example/bpf/*"]
`))
	ctx := context.Background()
	pub := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/NodePublishVolume"}
	unpub := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/NodeUnpublishVolume"}
	publish := func(vol string) {
		t.Helper()
		_, err := logCalls(ctx, publishReq(vol, testTarget, podAttrs("web")), pub, func(ctx context.Context, req any) (any, error) {
			return f.d.NodePublishVolume(ctx, req.(*csi.NodePublishVolumeRequest))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	unpublish := func(vol string) {
		t.Helper()
		_, err := logCalls(ctx, unpublishReq(vol, testTarget), unpub, func(ctx context.Context, req any) (any, error) {
			return f.d.NodeUnpublishVolume(ctx, req.(*csi.NodeUnpublishVolumeRequest))
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	for _, c := range []struct {
		what string
		call func(string)
		want []string
	}{
		{"publish", publish, []string{`"Audit"`, `action="load"`, `volume="vol-1"`, `target="` + testTarget + `"`, `pod="pod-1"`, `namespace="web"`,
			`program=`, `image="registry.example/bpf/counter:v1"`, `interface="eth0"`, `decision="allow"`, `result="ok"`}},
		{"unpublish", unpublish, []string{`"Audit"`, `action="unload"`, `volume="vol-1"`, `target="` + testTarget + `"`, `pod="pod-1"`, `result="ok"`}},
	} {
		buf.Reset()
		c.call("vol-1")
		klog.Flush()
		lines := logLines(t, buf.String())
		if len(lines) != 1 {
			t.Fatalf("%s logged %d lines at the default verbosity, want 1 (the audit):\n%s", c.what, len(lines), buf.String())
		}
		for _, w := range c.want {
			if !strings.Contains(lines[0], w) {
				t.Errorf("%s's audit line lacks %s: %s", c.what, w, lines[0])
			}
		}
	}

	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("v", "4")
	t.Cleanup(func() { fs.Set("v", "0") })
	buf.Reset()
	publish("vol-2")
	unpublish("vol-2")
	klog.Flush()
	for _, w := range []string{"Publish request", "Unpublish request", "Published volume", "CSI call done"} {
		if !strings.Contains(buf.String(), w) {
			t.Errorf("at -v=4 the log lacks %q:\n%s", w, buf.String())
		}
	}
}
