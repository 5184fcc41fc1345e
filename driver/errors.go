package driver

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Inside the driver every error carries a fault kind (or none: Internal).
// The gRPC status is made once, at the RPC boundary, by toStatus.

// codes by fault kind.
var faultCodes = map[fault.Kind]codes.Code{
	fault.Internal:         codes.Internal,
	fault.Invalid:          codes.InvalidArgument,
	fault.NotFound:         codes.NotFound,
	fault.Precondition:     codes.FailedPrecondition,
	fault.Exhausted:        codes.ResourceExhausted,
	fault.Unavailable:      codes.Unavailable,
	fault.PermissionDenied: codes.PermissionDenied,
	fault.Canceled:         codes.Canceled,
	fault.AlreadyExists:    codes.AlreadyExists,
	fault.Aborted:          codes.Aborted,
}

// toStatus turns an error into a gRPC status error whose code says what the
// caller can do; the message is the error's, which names what was wrong.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	return status.Error(codeOf(err), err.Error())
}

// codeOf maps an error's fault kind to its gRPC code. A deadline that ran
// out is DeadlineExceeded (fault has one kind for both context errors).
func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	k := fault.Of(err)
	if k == fault.Canceled && errors.Is(err, context.DeadlineExceeded) {
		return codes.DeadlineExceeded
	}
	if c, ok := faultCodes[k]; ok {
		return c
	}
	return codes.Internal
}

// invalid is a bad request argument: InvalidArgument.
func invalid(format string, args ...any) error {
	return fault.Errorf(fault.Invalid, format, args...)
}

// Bounds on what one request can put into a log line or an event.
const (
	maxLogValue = 256  // one logged value (an attribute, a path, a name)
	maxLogError = 1024 // one logged or recorded error message
)

// clip cuts s to at most n bytes, on a rune boundary, saying how long it
// was: anything a request carries may be hostile and huge.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:cut], len(s))
}
