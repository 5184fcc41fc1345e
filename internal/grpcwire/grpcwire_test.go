package grpcwire

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// socketPath is a socket in a directory short enough for its path.
func socketPath(t *testing.T) string {
	dir, err := os.MkdirTemp("", "grpcwire-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s.sock")
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

func listen(t *testing.T) (string, *countingListener) {
	t.Helper()
	sock := socketPath(t)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return sock, &countingListener{Listener: l}
}

// node is a grpc-go CSI server: what the daemon's server is built on.
type node struct {
	csi.UnimplementedNodeServer
	csi.UnimplementedIdentityServer
	manifest map[string]string

	mu        sync.Mutex
	published []*csi.NodePublishVolumeRequest
	deadline  time.Duration // the call's deadline as the server saw it
	publish   func(ctx context.Context) error
}

func (n *node) NodePublishVolume(ctx context.Context, r *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	n.mu.Lock()
	n.published = append(n.published, r)
	if d, ok := ctx.Deadline(); ok {
		n.deadline = time.Until(d)
	}
	n.mu.Unlock()
	if n.publish != nil {
		if err := n.publish(ctx); err != nil {
			return nil, err
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (n *node) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: "csi.bpfmount.io", VendorVersion: "v1", Manifest: n.manifest}, nil
}

func serveGRPC(t *testing.T, n *node) (string, *countingListener) {
	t.Helper()
	sock, l := listen(t)
	srv := grpc.NewServer()
	csi.RegisterNodeServer(srv, n)
	csi.RegisterIdentityServer(srv, n)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock, l
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Requests and responses far over HTTP/2's initial 64 KiB windows cross
// in both directions, several calls share one connection, and the
// messages arrive intact.
func TestCallsAgainstGRPCGo(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 20000) // 320 KB
	n := &node{manifest: map[string]string{"big": big, "small": "s"}}
	sock, l := serveGRPC(t, n)
	c := Dial(sock)
	defer c.Close()
	ctx := context.Background()

	req := &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: "/t", VolumeContext: map[string]string{"globals": big}}
	out, err := c.Invoke(ctx, csi.Node_NodePublishVolume_FullMethodName, ContentTypeProto, marshal(t, req))
	if err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	if out == nil || len(out) != 0 {
		t.Errorf("NodePublishVolume answered %x, want an empty message", out)
	}
	if len(n.published) != 1 || !proto.Equal(n.published[0], req) {
		t.Errorf("the server got a different request (%d calls)", len(n.published))
	}

	for range 3 {
		out, err = c.Invoke(ctx, csi.Identity_GetPluginInfo_FullMethodName, ContentTypeProto, nil)
		if err != nil {
			t.Fatalf("GetPluginInfo: %v", err)
		}
		var resp csi.GetPluginInfoResponse
		if err := proto.Unmarshal(out, &resp); err != nil {
			t.Fatal(err)
		}
		if resp.Name != "csi.bpfmount.io" || resp.Manifest["big"] != big || resp.Manifest["small"] != "s" {
			t.Errorf("GetPluginInfo answered %d bytes: name %q, manifest of %d entries", len(out), resp.Name, len(resp.Manifest))
		}
	}
	if got := l.accepted.Load(); got != 1 {
		t.Errorf("4 calls made %d connections, want 1", got)
	}
}

// A server's status reaches the caller with its code and its message
// exactly, whatever bytes the message has (grpc-message percent-encodes
// some), and codes are named as grpc-go names them.
func TestStatusFromGRPCGo(t *testing.T) {
	var errc atomic.Pointer[error]
	sock, _ := serveGRPC(t, &node{publish: func(context.Context) error { return *errc.Load() }})
	c := Dial(sock)
	defer c.Close()
	for _, want := range []Status{
		{InvalidArgument, `attribute "interface": no such interface`},
		{NotFound, "100% gone: ünïcode, a tab\tand\na newline, %41 kept"},
		{FailedPrecondition, ""},
		{Unavailable, "no program is loaded under name \"x\""},
		{Code(42), "a code from the future"},
	} {
		err := status.Error(codes.Code(want.Code), want.Message)
		errc.Store(&err)
		_, got := c.Invoke(context.Background(), csi.Node_NodePublishVolume_FullMethodName, ContentTypeProto, nil)
		var st *Status
		if !errors.As(got, &st) || *st != want {
			t.Errorf("error %#v, want %#v", got, want)
		}
		if CodeOf(got) != want.Code || got.Error() != codes.Code(want.Code).String()+": "+want.Message {
			t.Errorf("CodeOf = %v, Error() = %q", CodeOf(got), got.Error())
		}
	}
	// A method the server does not have: grpc-go answers trailers-only.
	_, err := c.Invoke(context.Background(), "/bpfmount.v1.Nothing/Here", ContentTypeProto+"+json", []byte("{}"))
	if CodeOf(err) != Unimplemented || !strings.Contains(err.Error(), "bpfmount.v1.Nothing") {
		t.Errorf("unknown service: %v, want Unimplemented naming it", err)
	}
}

func TestCodeNames(t *testing.T) {
	for c := range Code(20) {
		if c.String() != codes.Code(c).String() {
			t.Errorf("Code(%d) = %q, grpc-go names it %q", c, c, codes.Code(c))
		}
	}
	if CodeOf(nil) != OK || CodeOf(errors.New("x")) != Unknown || CodeOf(&Status{NotFound, ""}) != NotFound {
		t.Error("CodeOf")
	}
}

// The call's deadline ends it and travels to the server as grpc-timeout;
// a context already done sends nothing.
func TestDeadline(t *testing.T) {
	n := &node{publish: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
	sock, l := serveGRPC(t, n)
	c := Dial(sock)
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.Invoke(ctx, csi.Node_NodePublishVolume_FullMethodName, ContentTypeProto, nil)
	if want := (Status{DeadlineExceeded, "context deadline exceeded"}); !errors.As(err, new(*Status)) || err.Error() != want.Error() {
		t.Errorf("error %v, want %v", err, &want)
	}
	n.mu.Lock()
	seen := n.deadline
	n.mu.Unlock()
	if seen <= 0 || seen > time.Second {
		t.Errorf("the server saw a deadline %v away, want one within the client's 1s", seen)
	}

	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	before := l.accepted.Load()
	if _, err := c.Invoke(ctx, csi.Node_NodePublishVolume_FullMethodName, ContentTypeProto, nil); CodeOf(err) != Canceled {
		t.Errorf("canceled context: %v, want Canceled", err)
	}
	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := c.Invoke(ctx, csi.Node_NodePublishVolume_FullMethodName, ContentTypeProto, nil); CodeOf(err) != DeadlineExceeded {
		t.Errorf("expired context: %v, want DeadlineExceeded", err)
	}
	if len(n.published) != 1 || l.accepted.Load() != before {
		t.Errorf("a context already done reached the server: %d calls", len(n.published))
	}
}

// serveHTTP2 serves h with unencrypted HTTP/2 only (a hand-made peer).
func serveHTTP2(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	sock, l := listen(t)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func frame(flags byte, msg []byte) []byte {
	b := make([]byte, 5, 5+len(msg))
	b[0] = flags
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// What a gRPC server may send, and what the call returns for it, from a
// peer written by hand; it also checks what the client sends.
func TestResponses(t *testing.T) {
	type answer func(w http.ResponseWriter)
	grpcHeaders := func(w http.ResponseWriter) { w.Header().Set("Content-Type", "application/grpc") }
	withTrailers := func(body []byte, kv ...string) answer {
		return func(w http.ResponseWriter) {
			grpcHeaders(w)
			for i := 0; i < len(kv); i += 2 {
				w.Header().Set(http.TrailerPrefix+kv[i], kv[i+1])
			}
			w.WriteHeader(http.StatusOK)
			w.Write(body)
		}
	}
	trailersOnly := func(kv ...string) answer {
		return func(w http.ResponseWriter) {
			grpcHeaders(w)
			for i := 0; i < len(kv); i += 2 {
				w.Header().Set(kv[i], kv[i+1])
			}
			// No body and no trailers: one HEADERS frame that ends the stream.
		}
	}
	cases := []struct {
		name     string
		answer   answer
		want     string // the message, or the error
		wantCode Code
	}{
		{"message and OK trailers", withTrailers(frame(0, []byte("hello")), "Grpc-Status", "0"), "hello", OK},
		{"error in trailers", withTrailers(nil, "Grpc-Status", "5", "Grpc-Message", "no volume %25 here%"), "NotFound: no volume % here%", NotFound},
		{"trailers-only error", trailersOnly("Grpc-Status", "9", "Grpc-Message", "a%20b%zz%E2%9C%93"), "FailedPrecondition: a b%zz✓", FailedPrecondition},
		{"trailers-only OK has no message", trailersOnly("Grpc-Status", "0"), "Internal: the server at @ answered /s/M with no message", Internal},
		{"no status", withTrailers(frame(0, []byte("x"))), "Internal: the server at @ ended /s/M without a gRPC status", Internal},
		{"malformed status", trailersOnly("Grpc-Status", "five"), `Unknown: the server sent a malformed grpc-status "five"`, Unknown},
		{"HTTP 503 without status", func(w http.ResponseWriter) { grpcHeaders(w); w.WriteHeader(503) }, "Unavailable: the server at @ answered 503 Service Unavailable without a gRPC status", Unavailable},
		{"compressed", withTrailers(frame(1, []byte("x")), "Grpc-Status", "0"), "Internal: the response message has flags 0x1: this client takes only uncompressed messages", Internal},
		{"two messages", withTrailers(append(frame(0, []byte("a")), frame(0, []byte("b"))...), "Grpc-Status", "0"), "Internal: the server sent more than one response message to a unary call", Internal},
		{"truncated", withTrailers(frame(0, []byte("abc"))[:6], "Grpc-Status", "0"), "Internal: reading the response: unexpected EOF", Internal},
		{"too large", withTrailers(binary.BigEndian.AppendUint32([]byte{0}, MaxResponse+1), "Grpc-Status", "0"), "ResourceExhausted: the response message has 4194305 bytes, more than the 4194304 this client takes", ResourceExhausted},
		{"not gRPC", func(w http.ResponseWriter) { http.NotFound(w, nil) }, `Unavailable: the server at @ is not a gRPC server: it answered 404 Not Found with content type "text/plain; charset=utf-8"`, Unavailable},
	}
	var current atomic.Pointer[answer]
	var checkErr atomic.Pointer[string]
	sock := serveHTTP2(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var bad []string
		if r.ProtoMajor != 2 || r.Method != http.MethodPost || r.URL.Path != "/s/M" {
			bad = append(bad, "request "+r.Proto+" "+r.Method+" "+r.URL.Path)
		}
		if r.Header.Get("Content-Type") != "application/grpc+test" || r.Header.Get("Te") != "trailers" || r.Header.Get("Grpc-Timeout") == "" {
			bad = append(bad, fmt.Sprintf("headers %v", r.Header))
		}
		if string(body) != string(frame(0, []byte("req"))) {
			bad = append(bad, "body "+string(body))
		}
		if len(bad) > 0 {
			s := strings.Join(bad, ", ")
			checkErr.Store(&s)
		}
		(*current.Load())(w)
	})
	c := Dial(sock)
	defer c.Close()
	for _, cs := range cases {
		current.Store(&cs.answer)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := c.Invoke(ctx, "/s/M", "application/grpc+test", []byte("req"))
		cancel()
		want := strings.ReplaceAll(cs.want, "@", sock)
		switch {
		case cs.wantCode == OK && (err != nil || string(out) != want):
			t.Errorf("%s: %q, %v; want %q", cs.name, out, err, want)
		case cs.wantCode != OK && (CodeOf(err) != cs.wantCode || want != "" && err.Error() != want):
			t.Errorf("%s: %v\n want %s", cs.name, err, want)
		}
	}
	if p := checkErr.Load(); p != nil {
		t.Errorf("the server got: %s", *p)
	}
}

// A socket whose server is not gRPC, or no server at all, is an error
// that says so; a server that never answers is bounded by the deadline.
func TestNotAGRPCServer(t *testing.T) {
	// HTTP/1 only: it answers the HTTP/2 preface with an HTTP/1 error.
	sock1, l1 := listen(t)
	h1 := &http.Server{Handler: http.NotFoundHandler()}
	go h1.Serve(l1)
	t.Cleanup(func() { h1.Close() })
	// Accepts and closes at once.
	sock2, l2 := listen(t)
	go func() {
		for {
			c, err := l2.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { l2.Close() })
	// Accepts and says nothing.
	sock3, l3 := listen(t)
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l3.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l3.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	missing := filepath.Join(filepath.Dir(socketPath(t)), "none.sock")

	for _, c := range []struct {
		name, sock string
		code       Code
		want       []string
	}{
		{"HTTP/1 server", sock1, Unavailable, []string{"the connection to the server at " + sock1 + " failed", "is it a gRPC server?"}},
		{"closes at once", sock2, Unavailable, []string{"the connection to the server at " + sock2 + " failed", "is it a gRPC server?"}},
		{"silent", sock3, DeadlineExceeded, []string{"context deadline exceeded"}},
		{"no socket", missing, Unavailable, []string{"cannot connect to the server at " + missing, "no such file or directory", "is it running?"}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn := Dial(c.sock)
		_, err := conn.Invoke(ctx, "/s/M", ContentTypeProto, nil)
		conn.Close()
		cancel()
		if CodeOf(err) != c.code {
			t.Errorf("%s: %v, want code %v", c.name, err, c.code)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q lacks %q", c.name, err, w)
			}
		}
	}
}

func TestEncodeTimeout(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{1, "1n"},
		{99999999, "99999999n"},
		{100000000, "100000u"},
		{100000001, "100001u"}, // rounded up
		{2 * time.Minute, "120000m"},
		{99999999 * time.Millisecond, "99999999m"},
		{30 * time.Hour, "108000S"},
		{99999999 * time.Second, "99999999S"},
		{99999999 * time.Minute, "99999999M"},
		{1 << 62, "76861434M"},
		{math.MaxInt64, "2562048H"},
	} {
		if got := encodeTimeout(c.d); got != c.want {
			t.Errorf("encodeTimeout(%v) = %q, want %q", c.d, got, c.want)
		}
	}
}

func TestDecodeMessage(t *testing.T) {
	for in, want := range map[string]string{
		"":                "",
		"plain":           "plain",
		"a%20b":           "a b",
		"%E2%9C%93":       "✓",
		"100%":            "100%",
		"%4":              "%4",
		"%zz%4a":          "%zzJ",
		"tab%09nl%0Aend%": "tab\tnl\nend%",
	} {
		if got := decodeMessage(in); got != want {
			t.Errorf("decodeMessage(%q) = %q, want %q", in, got, want)
		}
	}
}
