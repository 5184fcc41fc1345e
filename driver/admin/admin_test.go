package admin

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

type fakeServer struct {
	csi.UnimplementedIdentityServer
	resp *ListVolumesResponse
	err  error
}

func (f *fakeServer) ListVolumes(context.Context, *ListVolumesRequest) (*ListVolumesResponse, error) {
	return f.resp, f.err
}

func (f *fakeServer) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: "csi.bpfmount.io"}, nil
}

func serve(t *testing.T, f *fakeServer, interceptor grpc.UnaryServerInterceptor) *grpc.ClientConn {
	t.Helper()
	dir, err := os.MkdirTemp("", "admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if interceptor != nil {
		opts = append(opts, grpc.UnaryInterceptor(interceptor))
	}
	srv := grpc.NewServer(opts...)
	Register(srv, f)
	csi.RegisterIdentityServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "s"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// The JSON messages and the CSI protobuf ones share one connection, and
// the server's interceptors see the admin call under its full name.
func TestListVolumesBesideCSI(t *testing.T) {
	want := &ListVolumesResponse{Volumes: []Volume{{VolumeID: "v", Target: "/t", Maps: []string{"m"}, ProgramID: 9, ReadOnly: true}}}
	var seen []string
	conn := serve(t, &fakeServer{resp: want}, func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		seen = append(seen, info.FullMethod)
		return h(ctx, req)
	})
	got, err := NewClient(conn).ListVolumes(context.Background())
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ListVolumes = %+v, %v; want %+v", got, err, want)
	}
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != "csi.bpfmount.io" {
		t.Fatalf("a CSI call on the same connection: %v, %v", info, err)
	}
	if !reflect.DeepEqual(seen, []string{ListVolumesMethod, "/csi.v1.Identity/GetPluginInfo"}) {
		t.Errorf("interceptor saw %q", seen)
	}
}

func TestListVolumesErrorKeepsCode(t *testing.T) {
	conn := serve(t, &fakeServer{err: status.Error(codes.Internal, "reading the volume records: boom")}, nil)
	_, err := NewClient(conn).ListVolumes(context.Background())
	if st, _ := status.FromError(err); st.Code() != codes.Internal || st.Message() != "reading the volume records: boom" {
		t.Errorf("err = %v, want the server's code and message", err)
	}
}
