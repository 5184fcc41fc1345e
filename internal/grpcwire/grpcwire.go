// Package grpcwire makes unary gRPC calls over a unix socket: HTTP/2
// without TLS by prior knowledge, a message in, a message out, the status
// from the trailers. It is what the command-line client speaks to the
// daemon with, so the client links neither grpc-go and protobuf's
// registries nor net/http and its TLS stack, whose package initialisation
// was most of its start-up time. Messages are bytes: the caller encodes
// and decodes them (protobuf for CSI, JSON for the admin service).
//
// It does no compression, streaming, retries or name resolution: the
// daemon is one socket and every call one request.
package grpcwire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"
)

// ContentTypeProto is the content type of protobuf messages (CSI).
const ContentTypeProto = "application/grpc"

// MaxResponse is the largest response message accepted, grpc-go's default.
const MaxResponse = 4 << 20

// Conn is a connection to the gRPC server on a unix socket, made by the
// first call and kept for the next ones (one HTTP/2 connection). Calls on
// one Conn run one at a time.
type Conn struct {
	socket string
	mu     sync.Mutex
	h      *h2conn // nil before the first call and after a failed one
}

// Dial returns a Conn to the server on socket. Nothing is dialed until
// the first call.
func Dial(socket string) *Conn { return &Conn{socket: socket} }

// Close closes the connection.
func (c *Conn) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.h != nil {
		c.h.nc.Close()
		c.h = nil
	}
}

// Invoke calls method ("/package.Service/Method") with the encoded
// message req in content type contentType and returns the encoded
// response. Every error is a *Status: the server's, or one saying what
// went wrong on the way, mostly with the code grpc-go would give it; a
// peer that answers without a gRPC content type is Unavailable, where
// grpc-go maps its HTTP status (200 to Unknown). ctx's deadline bounds
// the call and is sent as grpc-timeout.
func (c *Conn) Invoke(ctx context.Context, method, contentType string, req []byte) ([]byte, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, ctxStatus(err)
	}
	headers := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: method}, {Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: contentType}, {Name: "te", Value: "trailers"},
		{Name: "user-agent", Value: "bpfmount-grpcwire"},
	}
	deadline, hasDeadline := ctx.Deadline()
	if hasDeadline {
		headers = append(headers, hpack.HeaderField{Name: "grpc-timeout", Value: encodeTimeout(time.Until(deadline))})
	}
	body := make([]byte, 5+len(req))
	binary.BigEndian.PutUint32(body[1:5], uint32(len(req))) // body[0] = 0: not compressed
	copy(body[5:], req)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.h == nil {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", c.socket)
		if err != nil {
			if err := ctxErr(ctx); err != nil {
				return nil, ctxStatus(err)
			}
			return nil, &Status{Unavailable, fmt.Sprintf("cannot connect to the server at %s: %v (is it running?)", c.socket, err)}
		}
		c.h = newH2(nc)
	}
	h := c.h
	// The deadline bounds every read and write; a cancel moves it to the
	// past, which ends a read or write blocked on the socket at once.
	if hasDeadline {
		h.nc.SetDeadline(deadline)
	} else {
		h.nc.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { h.nc.SetDeadline(time.Unix(1, 0)) })
	resp, err := h.roundTrip(headers, body)
	if !stop() || err != nil || h.closeAfter {
		h.nc.Close()
		c.h = nil
	}
	if err != nil {
		if err := ctxErr(ctx); err != nil {
			return nil, ctxStatus(err)
		}
		var reset resetError
		if errors.As(err, &reset) {
			return nil, &Status{reset.code(), fmt.Sprintf("calling %s at %s: %v", method, c.socket, err)}
		}
		advice := " (is it a gRPC server?)"
		if errors.As(err, new(advisedError)) {
			advice = "" // the error says what to do
		}
		return nil, &Status{Unavailable, fmt.Sprintf("the connection to the server at %s failed: %v%s", c.socket, err, advice)}
	}
	if ct := resp.header["content-type"]; !strings.HasPrefix(ct, ContentTypeProto) {
		// No gRPC server answers without a gRPC content type: whatever
		// listens there is not the daemon, so Unavailable, as for no
		// server at all, not the Unknown grpc-go gives a 200.
		return nil, &Status{Unavailable, fmt.Sprintf("the server at %s is not a gRPC server: it answered %s with content type %q", c.socket, statusText(resp.status), ct)}
	}
	msg, readErr := readMessage(bytes.NewReader(resp.body))
	// The status is in the trailers, or in the headers of a response that
	// has no body (trailers-only: how servers answer most errors).
	st := statusFrom(resp.trailer)
	if st == nil {
		st = statusFrom(resp.header)
	}
	switch {
	case st != nil && st.Code != OK:
		return nil, st
	case readErr != nil:
		return nil, readErr
	case st == nil && resp.status != 200:
		return nil, &Status{codeForHTTP(resp.status), fmt.Sprintf("the server at %s answered %s without a gRPC status", c.socket, statusText(resp.status))}
	case st == nil:
		return nil, &Status{Internal, fmt.Sprintf("the server at %s ended %s without a gRPC status", c.socket, method)}
	case msg == nil:
		return nil, &Status{Internal, fmt.Sprintf("the server at %s answered %s with no message", c.socket, method)}
	}
	return msg, nil
}

// readMessage reads a unary response's body: one length-prefixed
// message, or none, and nothing after it.
func readMessage(body io.Reader) ([]byte, error) {
	var prefix [5]byte
	if _, err := io.ReadFull(body, prefix[:]); err == io.EOF {
		return nil, nil
	} else if err != nil {
		return nil, &Status{Internal, fmt.Sprintf("reading the response: %v", err)}
	}
	if prefix[0] != 0 {
		// Compressed (we offer no grpc-accept-encoding) or unknown flags.
		return nil, &Status{Internal, fmt.Sprintf("the response message has flags %#x: this client takes only uncompressed messages", prefix[0])}
	}
	n := binary.BigEndian.Uint32(prefix[1:])
	if n > MaxResponse {
		return nil, &Status{ResourceExhausted, fmt.Sprintf("the response message has %d bytes, more than the %d this client takes", n, MaxResponse)}
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(body, msg); err != nil {
		return nil, &Status{Internal, fmt.Sprintf("reading the response: %v", err)}
	}
	// Unary: a second message is a protocol error; reading on to EOF also
	// makes the trailers available.
	if extra, err := io.Copy(io.Discard, body); err != nil {
		return nil, &Status{Internal, fmt.Sprintf("reading the response: %v", err)}
	} else if extra != 0 {
		return nil, &Status{Internal, "the server sent more than one response message to a unary call"}
	}
	return msg, nil
}

// statusFrom reads grpc-status and grpc-message from h; nil when h has no
// grpc-status.
func statusFrom(h map[string]string) *Status {
	v := h["grpc-status"]
	if v == "" {
		return nil
	}
	code, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return &Status{Unknown, fmt.Sprintf("the server sent a malformed grpc-status %q", v)}
	}
	return &Status{Code(code), decodeMessage(h["grpc-message"])}
}

// ctxErr is ctx's error, or DeadlineExceeded once its deadline has
// passed even if its timer has not fired yet: a server that enforces the
// grpc-timeout sent to it may reset the stream first.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

// ctxStatus is the status of a call its context ended, with grpc-go's
// messages ("context deadline exceeded").
func ctxStatus(err error) *Status {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Status{DeadlineExceeded, err.Error()}
	}
	return &Status{Canceled, err.Error()}
}

// encodeTimeout is grpc-timeout's value for d: at most 8 digits and a
// unit, rounded up so the server never gives up before the client.
func encodeTimeout(d time.Duration) string {
	const maxValue = 99999999
	units := []struct {
		unit time.Duration
		name string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}, {time.Hour, "H"}}
	for i, u := range units {
		v := d / u.unit
		if d%u.unit != 0 {
			v++
		}
		if v <= maxValue || i == len(units)-1 { // a Duration is at most 2562048 hours
			return strconv.FormatInt(int64(v), 10) + u.name
		}
	}
	panic("unreachable")
}
