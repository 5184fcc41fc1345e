package driver

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// node:default resolves before the policy decides, the policy sees the
// real name, and the record keeps it beside the attribute as written.
func TestNodeDefaultResolvedAtPublish(t *testing.T) {
	attrs := podAttrs("net")
	attrs[AttrInterface] = NodeDefault
	f := newTestDriver(t, mustPolicy(t, `rules:
- name: net
  namespaces: ["net"]
  images: ["registry.example/bpf/*"]
  interfaces: ["ens*"]
`))
	f.d.defaultRoute = func() (string, error) { return "ens5", nil }
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, attrs)); err != nil {
		t.Fatal(err)
	}
	rec := f.store.records["vol-1"]
	if rec == nil || rec.Identity.Interface != "ens5" || rec.Attributes[AttrInterface] != NodeDefault {
		t.Fatalf("record %+v", rec)
	}
	// Idempotent: the same request again is already published.
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, attrs)); err != nil {
		t.Fatal(err)
	}

	f.d.defaultRoute = func() (string, error) { return "eth0", nil }
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-2", testTarget+"2", attrs))
	wantCode(t, err, codes.PermissionDenied, `on "eth0"`)

	f.d.defaultRoute = func() (string, error) {
		return "", fault.Errorf(fault.Precondition, "this node has no default route")
	}
	_, err = f.d.NodePublishVolume(context.Background(), publishReq("vol-3", testTarget+"3", attrs))
	wantCode(t, err, codes.FailedPrecondition, "no default route")
}
