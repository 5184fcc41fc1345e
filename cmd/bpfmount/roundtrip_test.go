//go:build !bpfmount_cli

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/admin"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/internal/testenv"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
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

// The client against the daemon's own gRPC server (driver.NewServer with
// the admin service beside it, as serve builds it) in this process, on a
// driver over temporary directories, next to grpc-go's client: both get
// the same answers. No root: nothing here loads a program.
func TestClientAgainstDaemonServer(t *testing.T) {
	dir := shortTempDir(t)
	ld, err := loader.New(loader.Options{Root: filepath.Join(dir, "pins"), Fetcher: bytecode.Layout{}, NodeName: "n"})
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	// Enough volumes that the list is several times HTTP/2's initial
	// 64 KiB flow-control windows.
	for i := range 600 {
		if err := store.Put(&state.Record{
			Version: 1, VolumeID: fmt.Sprintf("csi-%04d", i), TargetPath: fmt.Sprintf("/var/lib/kubelet/pods/%04d/volumes/kubernetes.io~csi/counter/mount", i),
			Image: "registry.example/bpf/counter:v1", Key: fmt.Sprintf("k%d", i), ProgramID: uint32(i + 1), Maps: []string{"stats", "cfg"},
			Identity: loader.Identity{Digest: "sha256:0123456789abcdef", Program: "xdp_count", Hook: "xdp", Interface: "eth0", Priority: 50},
			Pod:      state.Pod{Namespace: "apps", Name: fmt.Sprintf("web-%d", i), UID: fmt.Sprintf("uid-%d", i)},
		}); err != nil {
			t.Fatal(err)
		}
	}
	d, err := driver.New(driver.Options{NodeID: "n", StateDir: filepath.Join(dir, "state"), BPFFSRoot: filepath.Join(dir, "pins"), Loader: ld})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := driver.NewServer(d, serverOptions()...)
	driver.RegisterAdmin(srv, d)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	ep := "unix://" + sock

	out, err := run(t, "list", "--endpoint", ep, "-o", "json")
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	var got []admin.Volume
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	want, err := admin.NewClient(conn).ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(want); len(b) < 3*65536 {
		t.Errorf("the list is only %d bytes", len(b))
	}
	if len(got) != 600 || !reflect.DeepEqual(got, want.Volumes) {
		t.Errorf("list -o json has %d volumes, grpc-go's client %d; they differ", len(got), len(want.Volumes))
	}

	// Requests the daemon refuses: the user sees its code and message, as
	// grpc-go's client receives them.
	target := filepath.Join(dir, "vol")
	for _, attrs := range [][]string{
		{},
		{"image=x", "interface=eth0", "priority=none"},
		{"image=oci:" + filepath.Join(dir, "no-such-layout") + ":v1", "interface=eth0"},
	} {
		args := []string{"publish", "--endpoint", ep, "--target", target}
		vc := map[string]string{}
		for _, a := range attrs {
			args = append(args, "--attr", a)
			k, v, _ := strings.Cut(a, "=")
			vc[k] = v
		}
		_, cliErr := run(t, args...)
		_, refErr := csi.NewNodeClient(conn).NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
			VolumeId: derivedVolumeID(target), TargetPath: target, VolumeContext: vc,
			VolumeCapability: &csi.VolumeCapability{
				AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
			},
		})
		st := status.Convert(refErr)
		t.Logf("publish %q: %v", attrs, cliErr)
		if refErr == nil || cliErr == nil || cliErr.Error() != st.Code().String()+": "+st.Message() {
			t.Errorf("publish %q: the CLI says %v; grpc-go's client got %v", attrs, cliErr, refErr)
		}
	}
	// A volume ID the daemon refuses, on unpublish.
	if _, err := run(t, "unpublish", "--endpoint", ep, "--target", "/var/lib/kubelet/pods/0001/volumes/kubernetes.io~csi/counter/mount", "--volume-id", "bad id/"); err == nil || !strings.HasPrefix(err.Error(), "InvalidArgument: ") {
		t.Errorf("unpublish with a malformed volume ID: %v, want InvalidArgument", err)
	}
}
