//go:build !bpfmount_cli

package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfmount/bpfmount/driver/admin"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// The CLI against the real daemon binary, as README's single-host example:
// a target whose parent is missing, a volume ID of the user's own, list,
// and unpublish by target alone, which must detach the program.
func TestRoundTripWithDaemon(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.NewProcDaemon(t, testenv.BuildDaemon(t, ""))
	p.Start(t)
	v := testenv.NewVeth(t)
	layout := testenv.Layout(t, testenv.XDPCounterObject, "v1")
	target := filepath.Join(testenv.ShortTempDir(t), "run", "bpf", "counter")

	if _, err := run(t, "publish", "--endpoint", p.Endpoint, "--volume-id", "my-vol", "--target", target,
		"--readonly", "--attr", "image="+layout, "--attr", "interface="+v.Host); err != nil {
		t.Fatalf("publish: %v", err)
	}
	id := testenv.XDPProgram(t, v.Host)
	if id == 0 {
		t.Fatal("publish attached nothing")
	}

	out, err := run(t, "list", "--endpoint", p.Endpoint, "-o", "json")
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	var vols []admin.Volume
	if err := json.Unmarshal([]byte(out), &vols); err != nil {
		t.Fatalf("list -o json: %v\n%s", err, out)
	}
	if len(vols) != 1 || vols[0].VolumeID != "my-vol" || vols[0].Target != target || vols[0].ProgramID != id ||
		vols[0].Interface != v.Host || vols[0].Hook != "xdp" || !vols[0].ReadOnly || !strings.HasPrefix(vols[0].Digest, "sha256:") {
		t.Errorf("list = %+v; want my-vol at %s, program %d on %s", vols, target, id, v.Host)
	}

	if _, err := run(t, "unpublish", "--endpoint", p.Endpoint, "--target", target); err != nil {
		t.Fatalf("unpublish --target: %v", err)
	}
	if id := testenv.XDPProgram(t, v.Host); id != 0 {
		t.Errorf("unpublish --target left program %d attached", id)
	}
	if _, err := run(t, "unpublish", "--endpoint", p.Endpoint, "--target", target); err == nil || !strings.Contains(err.Error(), "no volume is published at") {
		t.Errorf("second unpublish: err = %v, want no volume at the target", err)
	}
	p.Terminate(t)
	testenv.AssertClean(t, p.StateDir, p.BPFFSRoot, v, target)
}
