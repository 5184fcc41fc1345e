// Package admin serves bpfmount's admin service with grpc-go, next to the
// CSI services on the daemon's socket: the questions the command-line
// client asks that CSI has no call for (which volumes exist).
//
// It has no generated code. The service is described by a hand-written
// grpc.ServiceDesc and its messages, in package adminapi, are plain Go
// structs carried as JSON (content subtype "bpfmount-json"), so the client
// needs neither protoc nor grpc-go: it links adminapi alone.
package admin

import (
	"context"
	"encoding/json"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"

	"github.com/bpfmount/bpfmount/driver/admin/adminapi"
)

// ServiceName is the gRPC service name.
const ServiceName = adminapi.ServiceName

// ListVolumesMethod is the full method name of ListVolumes.
const ListVolumesMethod = adminapi.ListVolumesMethod

// The messages are adminapi's (aliases, so both names are one type).
type (
	ListVolumesRequest  = adminapi.ListVolumesRequest
	ListVolumesResponse = adminapi.ListVolumesResponse
	Volume              = adminapi.Volume
)

// Server is what the daemon implements.
type Server interface {
	ListVolumes(context.Context, *ListVolumesRequest) (*ListVolumesResponse, error)
}

// Register serves srv on s.
func Register(s grpc.ServiceRegistrar, srv Server) {
	s.RegisterService(&serviceDesc, srv)
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*Server)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "ListVolumes",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			req := new(ListVolumesRequest)
			if err := dec(req); err != nil {
				return nil, err
			}
			call := func(ctx context.Context, req any) (any, error) {
				return srv.(Server).ListVolumes(ctx, req.(*ListVolumesRequest))
			}
			if interceptor == nil {
				return call(ctx, req)
			}
			return interceptor(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: ListVolumesMethod}, call)
		},
	}},
	Metadata: "bpfmount/admin",
}

// Client calls the admin service.
type Client struct{ cc grpc.ClientConnInterface }

// NewClient returns a client on cc.
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc: cc} }

// ListVolumes returns every volume the daemon knows, with usage.
func (c *Client) ListVolumes(ctx context.Context) (*ListVolumesResponse, error) {
	return c.List(ctx, &ListVolumesRequest{})
}

// List asks ListVolumes with req. A daemon predating a field of req
// ignores it: it returns every volume, with usage.
func (c *Client) List(ctx context.Context, req *ListVolumesRequest) (*ListVolumesResponse, error) {
	out := new(ListVolumesResponse)
	if err := c.cc.Invoke(ctx, ListVolumesMethod, req, out, grpc.CallContentSubtype(codecName)); err != nil {
		return nil, err
	}
	return out, nil
}

const codecName = adminapi.ContentSubtype

// jsonCodec carries the admin messages. gRPC picks a codec by the call's
// content subtype, so CSI calls on the same connection keep protobuf.
type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return codecName }

func init() { encoding.RegisterCodec(jsonCodec{}) }
