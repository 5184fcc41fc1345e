package grpcwire

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rawPeer is an HTTP/2 server written frame by frame: it reads the
// client's preface and its request, then answers with what script writes.
type rawPeer struct {
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
	// got is what the client sent: its frame types in order, and the
	// PING payloads it acknowledged.
	got   []http2.FrameType
	acked [][8]byte
}

func (p *rawPeer) block(kv ...string) []byte {
	p.buf.Reset()
	for i := 0; i < len(kv); i += 2 {
		p.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), p.buf.Bytes()...)
}

// answer sends a whole response on stream id: headers, msg, OK trailers.
func (p *rawPeer) answer(id uint32, msg []byte) {
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block(okHeaders...), EndHeaders: true})
	p.fr.WriteData(id, false, msg)
	p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block("grpc-status", "0"), EndHeaders: true, EndStream: true})
}

// readRequest reads frames until the request's stream ends; it returns
// the stream's id.
func (p *rawPeer) readRequest(t *testing.T) uint32 {
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			t.Errorf("peer: %v", err)
			return 0
		}
		p.got = append(p.got, f.Header().Type)
		if f.Header().Flags.Has(http2.FlagDataEndStream) && f.Header().Type == http2.FrameData {
			return f.Header().StreamID
		}
		if h, ok := f.(*http2.HeadersFrame); ok && h.StreamEnded() {
			return h.StreamID
		}
	}
}

func serveRaw(t *testing.T, script func(t *testing.T, p *rawPeer, nc net.Conn)) string {
	t.Helper()
	sock, l := listen(t)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				pre := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(nc, pre); err != nil || string(pre) != http2.ClientPreface {
					t.Errorf("preface %q, %v", pre, err)
					return
				}
				p := &rawPeer{fr: http2.NewFramer(nc, nc)}
				p.enc = hpack.NewEncoder(&p.buf)
				p.fr.WriteSettings()
				script(t, p, nc)
			}()
		}
	}()
	return sock
}

var okHeaders = []string{":status", "200", "content-type", "application/grpc"}

// The frames a server may send around a response: each is handled as
// HTTP/2 says, and each broken one ends the call with an error that
// names it.
func TestHTTP2Frames(t *testing.T) {
	msg := frame(0, []byte("hello"))
	cases := []struct {
		name   string
		script func(t *testing.T, p *rawPeer, id uint32)
		want   string // the message, or the error
		code   Code
	}{{
		name: "padded, split headers, a ping and settings on the way",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			p.fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
			p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
			b := p.block(okHeaders...)
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b[:2], PadLength: 3, Priority: http2.PriorityParam{Weight: 7}})
			p.fr.WriteContinuation(id, true, b[2:])
			p.fr.WriteDataPadded(id, false, msg[:3], []byte{0, 0})
			p.fr.WriteData(id, false, msg[3:])
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block("grpc-status", "0"), EndHeaders: true, EndStream: true})
		},
		want: "hello",
	}, {
		name: "another stream's headers keep the table in step",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			// Indexed in the dynamic table by a block on a stream the
			// client never opened: the next block refers to them by index.
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id + 2, BlockFragment: p.block(okHeaders...), EndHeaders: true})
			p.answer(id, msg)
		},
		want: "hello",
	}, {
		name: "refused stream",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			p.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
		},
		want: "Unavailable: calling /s/M at @: the server reset the call (REFUSED_STREAM)", code: Unavailable,
	}, {
		name: "canceled stream",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			p.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		},
		code: Canceled,
	}, {
		name: "going away before the call",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			p.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		},
		want: "Unavailable: the connection to the server at @ failed: the server is going away (GOAWAY, error code 0) and did not take the call: is the daemon stopping? Try again once it is back", code: Unavailable,
	}, {
		name: "going away after the call still answers it",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			p.fr.WriteGoAway(id, http2.ErrCodeNo, nil)
			p.answer(id, msg)
		},
		want: "hello",
	}, {
		name: "frame over the size allowed",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			p.fr.AllowIllegalWrites = true
			p.fr.WriteData(id, false, make([]byte, maxFrame+1))
		},
		want: "Unavailable: the connection to the server at @ failed: HTTP/2 protocol error: a frame of 16385 bytes", code: Unavailable,
	}, {
		name: "headers interrupted",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			b := p.block(okHeaders...)
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b[:2]})
			p.fr.WriteData(id, false, msg)
		},
		want: "Unavailable: the connection to the server at @ failed: HTTP/2 protocol error: a header block interrupted by another frame", code: Unavailable,
	}, {
		name: "bad padding",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block(okHeaders...), EndHeaders: true})
			p.fr.WriteRawFrame(http2.FrameData, http2.FlagDataPadded, id, []byte{9, 1, 2})
		},
		want: "Unavailable: the connection to the server at @ failed: HTTP/2 protocol error: padding longer than the frame", code: Unavailable,
	}, {
		name: "no :status",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block("content-type", "application/grpc"), EndHeaders: true, EndStream: true})
		},
		want: "Unavailable: the connection to the server at @ failed: HTTP/2 protocol error: a response without :status", code: Unavailable,
	}, {
		name: "a header list over its bound from a small block",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			// A byte names a 4 KiB entry of the dynamic table: 1000 of
			// them decode to 4 MB.
			b := p.block(append(okHeaders, "x-a", strings.Repeat("a", 4000))...)
			b = append(b, bytes.Repeat([]byte{0xbe}, 1000)...)
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b, EndHeaders: true})
			p.fr.WriteData(id, false, msg)
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.block("grpc-status", "0"), EndHeaders: true, EndStream: true})
		},
		want: "Unavailable: the connection to the server at @ failed: HTTP/2 protocol error: a header list over 2097152 bytes", code: Unavailable,
	}, {
		name: "server push",
		script: func(t *testing.T, p *rawPeer, id uint32) {
			p.fr.WritePushPromise(http2.PushPromiseParam{StreamID: id, PromiseID: 2, BlockFragment: p.block(":path", "/x"), EndHeaders: true})
		},
		want: "Unavailable: the connection to the server at @ failed: HTTP/2 protocol error: unexpected frame type 5", code: Unavailable,
	}}
	for _, cs := range cases {
		t.Run(cs.name, func(t *testing.T) {
			peers := make(chan *rawPeer, 1)
			sock := serveRaw(t, func(t *testing.T, p *rawPeer, nc net.Conn) {
				id := p.readRequest(t)
				cs.script(t, p, id)
				// Read what the client sends after (acks), until it closes.
				nc.SetReadDeadline(time.Now().Add(time.Second))
				for {
					f, err := p.fr.ReadFrame()
					if err != nil {
						break
					}
					p.got = append(p.got, f.Header().Type)
					if ping, ok := f.(*http2.PingFrame); ok && ping.IsAck() {
						p.acked = append(p.acked, ping.Data)
					}
				}
				peers <- p
			})
			c := Dial(sock)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			out, err := c.Invoke(ctx, "/s/M", ContentTypeProto, []byte("req"))
			cancel()
			c.Close()
			want := strings.ReplaceAll(cs.want, "@", sock)
			switch {
			case cs.code == OK && (err != nil || string(out) != want):
				t.Errorf("%q, %v; want %q", out, err, want)
			case cs.code != OK && (CodeOf(err) != cs.code || !strings.HasPrefix(err.Error(), want)):
				t.Errorf("%v\n want %s (%v)", err, want, cs.code)
			}
			p := <-peers
			if strings.HasPrefix(cs.name, "padded") && (len(p.acked) != 1 || p.acked[0] != [8]byte{1, 2, 3, 4, 5, 6, 7, 8}) {
				t.Errorf("the client acknowledged pings %v, want the one sent", p.acked)
			}
		})
	}
}

// A daemon that stops during a call (its connection closes after it
// spoke HTTP/2) is said to have stopped, not to be something other than
// a gRPC server.
func TestServerClosesDuringCall(t *testing.T) {
	sock := serveRaw(t, func(t *testing.T, p *rawPeer, nc net.Conn) {
		p.readRequest(t)
	})
	c := Dial(sock)
	defer c.Close()
	_, err := c.Invoke(context.Background(), "/s/M", ContentTypeProto, []byte("req"))
	// EOF, or a reset or broken pipe when the close meets the client's
	// acknowledgement of the server's settings.
	if CodeOf(err) != Unavailable || !strings.HasPrefix(err.Error(), "Unavailable: the connection to the server at "+sock+" failed: the server closed the connection during the call (") ||
		!strings.HasSuffix(err.Error(), "): did the daemon stop or restart?") {
		t.Errorf("%v\n want Unavailable saying the daemon closed the connection", err)
	}
}

// The server's send window: a request larger than it waits for the
// server's WINDOW_UPDATEs, and the client refills its own receive window
// on the connection so that many calls of large responses keep flowing.
func TestHTTP2FlowControl(t *testing.T) {
	big := strings.Repeat("x", 3<<20)
	n := &node{manifest: map[string]string{"big": big}}
	sock, l := serveGRPC(t, n)
	c := Dial(sock)
	defer c.Close()
	// 3 MiB per response: a few calls exceed the connection's window
	// unless the client gives it back.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 5 {
		if _, err := c.Invoke(ctx, csi.Identity_GetPluginInfo_FullMethodName, ContentTypeProto, nil); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	req := marshal(t, &csi.NodePublishVolumeRequest{VolumeId: "v", TargetPath: "/t", VolumeContext: map[string]string{"a": big}})
	if _, err := c.Invoke(ctx, csi.Node_NodePublishVolume_FullMethodName, ContentTypeProto, req); err != nil {
		t.Fatalf("a 3 MiB request: %v", err)
	}
	if got := l.accepted.Load(); got != 1 {
		t.Errorf("6 calls made %d connections, want 1", got)
	}
}

// A trailer larger than a frame comes in HEADERS and CONTINUATION frames;
// a context canceled while the server works ends the call as Canceled.
func TestHTTP2LongStatusAndCancel(t *testing.T) {
	long := strings.Repeat("ab", 40000)
	release := make(chan struct{})
	var calls int
	sock, _ := serveGRPC(t, &node{publish: func(ctx context.Context) error {
		calls++
		if calls == 1 {
			return status.Error(codes.NotFound, long)
		}
		select {
		case <-ctx.Done():
		case <-release:
		}
		return nil
	}})
	defer close(release)
	c := Dial(sock)
	defer c.Close()
	_, err := c.Invoke(context.Background(), csi.Node_NodePublishVolume_FullMethodName, ContentTypeProto, nil)
	if st, ok := err.(*Status); !ok || st.Code != NotFound || st.Message != long {
		t.Fatalf("a %d-byte message: %.80v", len(long), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err = c.Invoke(ctx, csi.Node_NodePublishVolume_FullMethodName, ContentTypeProto, nil)
	if CodeOf(err) != Canceled || time.Since(start) > 5*time.Second {
		t.Errorf("canceled mid-call: %v after %v, want Canceled at once", err, time.Since(start))
	}
	// The connection the cancel broke is replaced by the next call.
	if _, err := c.Invoke(context.Background(), csi.Identity_GetPluginInfo_FullMethodName, ContentTypeProto, nil); err != nil {
		t.Errorf("the call after a cancel: %v", err)
	}
}

// appendFrame writes what HTTP/2 says a frame header is.
func TestAppendFrame(t *testing.T) {
	b := appendFrame(nil, frameWindowUpdate, 0, 1<<31|5, binary.BigEndian.AppendUint32(nil, 7))
	fr := http2.NewFramer(nil, bytes.NewReader(b))
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if wu, ok := f.(*http2.WindowUpdateFrame); !ok || wu.StreamID != 5 || wu.Increment != 7 {
		t.Errorf("read back %v", f)
	}
}

// A server's SETTINGS_HEADER_TABLE_SIZE bounds the table the client's
// encoder keeps: the next header block starts by shrinking it (RFC 7541
// 4.2), or the server's decoder would meet indexes it never kept.
func TestHTTP2HeaderTableSize(t *testing.T) {
	blocks := make(chan []byte, 2)
	sock := serveRaw(t, func(t *testing.T, p *rawPeer, nc net.Conn) {
		p.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
		for {
			f, err := p.fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.HeadersFrame:
				blocks <- append([]byte(nil), f.HeaderBlockFragment()...)
			case *http2.DataFrame:
				if f.StreamEnded() {
					p.answer(f.StreamID, frame(0, []byte("hello")))
				}
			}
		}
	})
	c := Dial(sock)
	defer c.Close()
	for i := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := c.Invoke(ctx, "/s/M", ContentTypeProto, []byte("req"))
		cancel()
		if err != nil || string(out) != "hello" {
			t.Fatalf("call %d: %q, %v", i, out, err)
		}
	}
	<-blocks // sent before the client read the server's settings
	// 0x20: a dynamic table size update to 0.
	if b := <-blocks; len(b) == 0 || b[0] != 0x20 {
		t.Errorf("the header block after SETTINGS_HEADER_TABLE_SIZE 0 starts % x, want 20 (table size 0)", b[:min(len(b), 4)])
	}
}
