package driver_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bpfmount/bpfmount/driver"
	"github.com/bpfmount/bpfmount/driver/admin"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// newAdminDriver is a driver on temporary directories, serving the admin
// service on a unix socket; it needs no root (nothing is loaded). put
// writes records into its state directory before the driver starts (the
// driver reads them once, at start).
func newAdminDriver(t *testing.T, put func(*state.Store)) (*driver.Driver, *state.Store, *admin.Client) {
	t.Helper()
	dir, err := os.MkdirTemp("", "bpfmount-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ld, err := loader.New(loader.Options{Root: filepath.Join(dir, "pins"), Fetcher: bytecode.Layout{}, NodeName: "n"})
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	put(store)
	d, err := driver.New(driver.Options{NodeID: "n", StateDir: filepath.Join(dir, "state"), BPFFSRoot: filepath.Join(dir, "pins"), Loader: ld})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "csi.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := driver.NewServer(d)
	driver.RegisterAdmin(srv, d)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "csi.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return d, store, admin.NewClient(conn)
}

func TestListVolumes(t *testing.T) {
	ctx := context.Background()
	_, _, empty := newAdminDriver(t, func(*state.Store) {})
	resp, err := empty.ListVolumes(ctx)
	if err != nil || len(resp.Volumes) != 0 {
		t.Fatalf("ListVolumes on an empty node = %+v, %v; want none", resp, err)
	}

	created := time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)
	pod := &state.Record{
		Version: 1, VolumeID: "csi-b", TargetPath: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/c/mount",
		StagingPath: "", ReadOnly: true, Image: "registry.example/bpf/c:v1", Signed: true,
		Attributes: map[string]string{"csi.storage.k8s.io/serviceAccount.tokens": "SECRET-TOKEN", "image": "registry.example/bpf/c:v1"},
		Identity:   loader.Identity{Digest: "sha256:aa", Program: "xdp_count", Hook: "xdp", Interface: "eth0", Priority: 50, XDPMode: "skb"},
		Key:        "k1", ProgramID: 42, Maps: []string{"stats"},
		Pod:     state.Pod{Name: "web-0", Namespace: "apps", UID: "u", ServiceAccount: "sa"},
		Created: created,
	}
	local := &state.Record{
		Version: 1, VolumeID: "a-local", TargetPath: "/run/bpf/tc", Image: "oci:/srv/tc:v1",
		Identity: loader.Identity{Digest: "sha256:bb", Program: "tc_count", Hook: "tcx", Direction: "egress", Interface: "veth0"},
		Key:      "k2", ProgramID: 7,
	}
	d, _, client := newAdminDriver(t, func(store *state.Store) {
		pod.StagingPath = store.StagingPath("csi-b")
		for _, r := range []*state.Record{pod, local} {
			if err := store.Put(r); err != nil {
				t.Fatal(err)
			}
		}
	})

	resp, err = client.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []admin.Volume{
		{VolumeID: "a-local", Target: "/run/bpf/tc", Image: "oci:/srv/tc:v1", Digest: "sha256:bb", Program: "tc_count",
			Hook: "tcx", Direction: "egress", Interface: "veth0", ProgramID: 7, Maps: []string{}},
		{VolumeID: "csi-b", Target: pod.TargetPath, PodNamespace: "apps", PodName: "web-0", PodUID: "u",
			Image: "registry.example/bpf/c:v1", Digest: "sha256:aa", Signed: true, Program: "xdp_count", Hook: "xdp",
			Interface: "eth0", Priority: 50, XDPMode: "skb", ProgramID: 42, Maps: []string{"stats"}, ReadOnly: true,
			Created: "2026-11-26T09:00:00Z"},
	}
	if !reflect.DeepEqual(resp.Volumes, want) {
		t.Errorf("ListVolumes:\n got %+v\nwant %+v", resp.Volumes, want)
	}
	// Attributes can carry a service account token: never listed.
	b, _ := json.Marshal(resp)
	if strings.Contains(string(b), "SECRET-TOKEN") {
		t.Errorf("ListVolumes leaks an attribute: %s", b)
	}

	recs, err := d.Volumes()
	if err != nil || len(recs) != 2 || recs[0].VolumeID != "a-local" || recs[1].VolumeID != "csi-b" {
		t.Errorf("Volumes() = %v, %v; want both records sorted by ID", recs, err)
	}
}
