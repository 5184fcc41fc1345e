package grpcwire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"

	"golang.org/x/net/http2/hpack"
)

// The HTTP/2 a unary gRPC call needs (RFC 9113), client side: one
// request at a time on a connection, a stream per call. It replaces
// net/http, whose package initialisation (and that of the TLS and X.509
// packages it links) was a third of the command line's start. hpack is
// x/net's, the library net/http itself vendors.

const (
	preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

	frameData         = 0x0
	frameHeaders      = 0x1
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePushPromise  = 0x5
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	settingHeaderTable   = 0x1
	settingEnablePush    = 0x2
	settingInitialWindow = 0x4
	settingMaxFrameSize  = 0x5

	// maxFrame is the largest frame this client takes: HTTP/2's default
	// SETTINGS_MAX_FRAME_SIZE, which it never raises.
	maxFrame = 16384
	// recvWindow is the receive window of every stream and of the
	// connection: more than the largest response taken, so a server never
	// waits for this client to make room.
	recvWindow = 8 << 20
	// maxHeaderBlock bounds a response's header or trailer block.
	maxHeaderBlock = 1 << 20
	// maxHeaderList bounds what a block decodes to, in RFC 9113's
	// measure (names, values and 32 bytes a field): a byte of a block can
	// name a 4 KiB entry of the dynamic table.
	maxHeaderList = 2 << 20
	// maxBody bounds what is kept of a response's body: the largest
	// message, its prefix and the next prefix (a second message is an
	// error readMessage reports).
	maxBody = 5 + MaxResponse + 5
)

// h2conn is one HTTP/2 connection to the server.
type h2conn struct {
	nc  net.Conn
	br  *bufio.Reader
	out []byte // frames to write at the next flush

	enc    *hpack.Encoder
	encBuf bytes.Buffer
	dec    *hpack.Decoder
	fields []hpack.HeaderField // what dec emitted for the block being decoded
	listed int                 // the size of the block's header list so far

	nextID      uint32
	sendFrame   int   // the server's SETTINGS_MAX_FRAME_SIZE
	peerWindow  int64 // the server's SETTINGS_INITIAL_WINDOW_SIZE
	connWindow  int64 // what this client may still send on the connection
	consumed    int64 // data received since the connection window was last refilled
	spoke       bool  // the server sent its settings: it speaks HTTP/2
	closeAfter  bool  // no next call can use the connection (GOAWAY, a response cut short)
	frameHeader [9]byte
}

// newH2 starts HTTP/2 on nc: the preface and this client's settings are
// sent with the first request.
func newH2(nc net.Conn) *h2conn {
	h := &h2conn{nc: nc, br: bufio.NewReaderSize(nc, 32<<10), nextID: 1, sendFrame: 16384, peerWindow: 65535, connWindow: 65535}
	h.enc = hpack.NewEncoder(&h.encBuf)
	h.dec = hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		if h.listed += int(f.Size()); h.listed <= maxHeaderList {
			h.fields = append(h.fields, f)
		}
	})
	h.dec.SetMaxStringLength(maxHeaderBlock)
	h.out = append(h.out, preface...)
	h.out = appendFrame(h.out, frameSettings, 0, 0,
		binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(
			binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(nil, settingEnablePush), 0),
			settingInitialWindow), recvWindow))
	h.out = appendFrame(h.out, frameWindowUpdate, 0, 0, binary.BigEndian.AppendUint32(nil, recvWindow-65535))
	return h
}

func appendFrame(b []byte, typ, flags byte, stream uint32, payload []byte) []byte {
	n := len(payload)
	b = append(b, byte(n>>16), byte(n>>8), byte(n), typ, flags)
	b = binary.BigEndian.AppendUint32(b, stream&0x7fffffff)
	return append(b, payload...)
}

func (h *h2conn) flush() error {
	if len(h.out) == 0 {
		return nil
	}
	_, err := h.nc.Write(h.out)
	h.out = h.out[:0]
	return err
}

// response is what the server answered on a stream.
type response struct {
	status  int
	header  map[string]string
	trailer map[string]string
	body    []byte // at most maxBody bytes: its start, if the server sent more
}

// advisedError is a failure whose text says what to do; the generic
// advice (is it a gRPC server?) does not follow it.
type advisedError struct{ error }

func (e advisedError) Unwrap() error { return e.error }

// closedError is err, the connection ending under a call, said as what
// it most likely is once the server has spoken HTTP/2: the daemon
// stopped.
func (h *h2conn) closedError(err error) error {
	if h.spoke && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		return advisedError{fmt.Errorf("the server closed the connection during the call (%v): did the daemon stop or restart?", err)}
	}
	return err
}

// protocolError is a server that broke HTTP/2.
type protocolError string

func (e protocolError) Error() string { return "HTTP/2 protocol error: " + string(e) }

// resetError is a stream the server reset.
type resetError uint32

func (e resetError) Error() string {
	names := map[uint32]string{0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL", 11: "ENHANCE_YOUR_CALM"}
	if n, ok := names[uint32(e)]; ok {
		return "the server reset the call (" + n + ")"
	}
	return "the server reset the call (error code " + strconv.FormatUint(uint64(e), 10) + ")"
}

// code is the gRPC status of a reset stream, as gRPC's HTTP/2 mapping
// gives it.
func (e resetError) code() Code {
	switch e {
	case 7:
		return Unavailable
	case 8:
		return Canceled
	case 11:
		return ResourceExhausted
	case 12:
		return PermissionDenied
	}
	return Internal
}

// roundTrip sends a request (headers, then body, which ends the stream)
// on a new stream and reads the response to its end. An error leaves the
// connection unusable.
func (h *h2conn) roundTrip(headers []hpack.HeaderField, body []byte) (*response, error) {
	if h.nextID > 1<<31-1 {
		return nil, errors.New("the connection has used up its stream IDs")
	}
	id := h.nextID
	h.nextID += 2
	if h.consumed > 0 {
		h.out = appendFrame(h.out, frameWindowUpdate, 0, 0, binary.BigEndian.AppendUint32(nil, uint32(h.consumed)))
		h.consumed = 0
	}
	h.encBuf.Reset()
	for _, f := range headers {
		if err := h.enc.WriteField(f); err != nil {
			return nil, err
		}
	}
	block, flags, typ := h.encBuf.Bytes(), byte(flagEndHeaders), byte(frameHeaders)
	for {
		n := min(len(block), h.sendFrame)
		if n < len(block) {
			flags &^= flagEndHeaders
		} else {
			flags |= flagEndHeaders
		}
		h.out = appendFrame(h.out, typ, flags, id, block[:n])
		block, flags, typ = block[n:], 0, frameContinuation
		if len(block) == 0 {
			break
		}
	}

	resp := &response{}
	streamWindow := h.peerWindow
	sent, sentAll, ended := 0, false, false
	for !ended {
		for !sentAll {
			n := min(len(body)-sent, h.sendFrame, int(max(0, min(h.connWindow, streamWindow))))
			if n == 0 && sent < len(body) {
				break // wait for the server to make room
			}
			var flags byte
			if sent+n == len(body) {
				flags, sentAll = flagEndStream, true
			}
			h.out = appendFrame(h.out, frameData, flags, id, body[sent:sent+n])
			sent += n
			h.connWindow -= int64(n)
			streamWindow -= int64(n)
		}
		if err := h.flush(); err != nil {
			return nil, h.closedError(err)
		}
		typ, flags, stream, payload, err := h.readFrame()
		if err != nil {
			return nil, h.closedError(err)
		}
		switch typ {
		case frameData:
			h.consumed += int64(len(payload))
			if stream != id {
				continue
			}
			data, err := unpad(flags, payload)
			if err != nil {
				return nil, err
			}
			if room := maxBody - len(resp.body); len(data) > room {
				// Enough for readMessage to refuse it; the rest of the
				// stream is never read.
				resp.body = append(resp.body, data[:room]...)
				h.closeAfter = true
				return resp, nil
			}
			resp.body = append(resp.body, data...)
			ended = flags&flagEndStream != 0
		case frameHeaders:
			fields, err := h.readHeaderBlock(stream, flags, payload)
			if err != nil {
				return nil, err
			}
			if stream != id {
				continue
			}
			if err := resp.addBlock(fields); err != nil {
				return nil, err
			}
			ended = flags&flagEndStream != 0
		case frameRSTStream:
			if stream != id {
				continue
			}
			if len(payload) != 4 {
				return nil, protocolError("RST_STREAM of " + strconv.Itoa(len(payload)) + " bytes")
			}
			return nil, resetError(binary.BigEndian.Uint32(payload))
		case frameSettings:
			if stream != 0 || len(payload)%6 != 0 {
				return nil, protocolError("malformed SETTINGS")
			}
			if flags&flagAck != 0 {
				continue
			}
			h.spoke = true
			for p := payload; len(p) > 0; p = p[6:] {
				v := binary.BigEndian.Uint32(p[2:6])
				switch binary.BigEndian.Uint16(p) {
				case settingHeaderTable:
					// The server's decoder keeps no larger a table: the
					// encoder shrinks its own at the next block.
					h.enc.SetMaxDynamicTableSizeLimit(v)
				case settingInitialWindow:
					if v > 1<<31-1 {
						return nil, protocolError("SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
					}
					streamWindow += int64(v) - h.peerWindow
					h.peerWindow = int64(v)
				case settingMaxFrameSize:
					if v < 16384 || v > 1<<24-1 {
						return nil, protocolError("SETTINGS_MAX_FRAME_SIZE out of range")
					}
					h.sendFrame = int(v)
				}
			}
			h.out = appendFrame(h.out, frameSettings, flagAck, 0, nil)
		case framePing:
			if len(payload) != 8 {
				return nil, protocolError("PING of " + strconv.Itoa(len(payload)) + " bytes")
			}
			if flags&flagAck == 0 {
				h.out = appendFrame(h.out, framePing, flagAck, 0, payload)
			}
		case frameGoAway:
			if len(payload) < 8 {
				return nil, protocolError("GOAWAY of " + strconv.Itoa(len(payload)) + " bytes")
			}
			h.closeAfter = true // no new streams
			if last := binary.BigEndian.Uint32(payload) & 0x7fffffff; id > last {
				return nil, advisedError{fmt.Errorf("the server is going away (GOAWAY, error code %d) and did not take the call: is the daemon stopping? Try again once it is back", binary.BigEndian.Uint32(payload[4:]))}
			}
		case frameWindowUpdate:
			if len(payload) != 4 {
				return nil, protocolError("WINDOW_UPDATE of " + strconv.Itoa(len(payload)) + " bytes")
			}
			inc := int64(binary.BigEndian.Uint32(payload) & 0x7fffffff)
			if stream == 0 {
				h.connWindow += inc
			} else if stream == id {
				streamWindow += inc
			}
		case framePushPromise, frameContinuation:
			return nil, protocolError("unexpected frame type " + strconv.Itoa(int(typ)))
		}
	}
	if !sentAll {
		// The server answered before taking the whole request (it may
		// do so to refuse it): end this side of the stream.
		h.out = appendFrame(h.out, frameRSTStream, 0, id, binary.BigEndian.AppendUint32(nil, 8))
	}
	return resp, nil
}

// readFrame reads the next frame. The payload is valid until the next
// read.
func (h *h2conn) readFrame() (typ, flags byte, stream uint32, payload []byte, err error) {
	if _, err := io.ReadFull(h.br, h.frameHeader[:]); err != nil {
		return 0, 0, 0, nil, err
	}
	b := h.frameHeader[:]
	n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
	if n > maxFrame {
		return 0, 0, 0, nil, protocolError(fmt.Sprintf("a frame of %d bytes, more than the %d allowed (%q)", n, maxFrame, b))
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(h.br, payload); err != nil {
		return 0, 0, 0, nil, err
	}
	return b[3], b[4], binary.BigEndian.Uint32(b[5:]) & 0x7fffffff, payload, nil
}

// readHeaderBlock reads the rest of a header block that starts with a
// HEADERS frame and decodes it. Every block is decoded, whichever stream
// it is on: HPACK's table is the connection's.
func (h *h2conn) readHeaderBlock(stream uint32, flags byte, payload []byte) ([]hpack.HeaderField, error) {
	frag, err := unpad(flags, payload)
	if err != nil {
		return nil, err
	}
	if flags&flagPriority != 0 {
		if len(frag) < 5 {
			return nil, protocolError("HEADERS too short for its priority")
		}
		frag = frag[5:]
	}
	block := append([]byte(nil), frag...)
	for flags&flagEndHeaders == 0 {
		var typ byte
		var s uint32
		typ, flags, s, payload, err = h.readFrame()
		if err != nil {
			return nil, err
		}
		if typ != frameContinuation || s != stream {
			return nil, protocolError("a header block interrupted by another frame")
		}
		if block = append(block, payload...); len(block) > maxHeaderBlock {
			return nil, protocolError("a header block over " + strconv.Itoa(maxHeaderBlock) + " bytes")
		}
	}
	h.fields, h.listed = h.fields[:0], 0
	if _, err := h.dec.Write(block); err != nil {
		return nil, protocolError("header block: " + err.Error())
	}
	if err := h.dec.Close(); err != nil {
		return nil, protocolError("header block: " + err.Error())
	}
	if h.listed > maxHeaderList {
		return nil, protocolError("a header list over " + strconv.Itoa(maxHeaderList) + " bytes")
	}
	return h.fields, nil
}

// unpad strips a DATA or HEADERS frame's padding.
func unpad(flags byte, payload []byte) ([]byte, error) {
	if flags&flagPadded == 0 {
		return payload, nil
	}
	if len(payload) == 0 || int(payload[0]) >= len(payload) {
		return nil, protocolError("padding longer than the frame")
	}
	return payload[1 : len(payload)-int(payload[0])], nil
}

// addBlock takes the response's headers (the first block) or trailers
// (the second).
func (r *response) addBlock(fields []hpack.HeaderField) error {
	if r.header == nil {
		r.header = map[string]string{}
		for _, f := range fields {
			if f.Name == ":status" {
				s, err := strconv.Atoi(f.Value)
				if err != nil || s < 100 || s > 999 {
					return protocolError(fmt.Sprintf("malformed :status %q", f.Value))
				}
				r.status = s
			} else if _, seen := r.header[f.Name]; !seen {
				r.header[f.Name] = f.Value
			}
		}
		if r.status == 0 {
			return protocolError("a response without :status")
		}
		return nil
	}
	if r.trailer != nil {
		return protocolError("a third header block")
	}
	r.trailer = map[string]string{}
	for _, f := range fields {
		if _, seen := r.trailer[f.Name]; !seen {
			r.trailer[f.Name] = f.Value
		}
	}
	return nil
}

// statusText is an HTTP status line's text for the codes a misdirected
// call meets; others are their number alone.
func statusText(code int) string {
	text := map[int]string{
		200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
		405: "Method Not Allowed", 415: "Unsupported Media Type", 429: "Too Many Requests",
		500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
	}[code]
	if text == "" {
		return strconv.Itoa(code)
	}
	return strconv.Itoa(code) + " " + text
}
