package driver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// toStatus turns an error into a gRPC status error whose code says what the
// caller can do; the message is the error's, which names what was wrong.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), err.Error())
}

func codeOf(err error) codes.Code {
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	var ae *attrError
	if errors.As(err, &ae) {
		return codes.InvalidArgument
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return codes.DeadlineExceeded
	}
	switch fault.Of(err) {
	case fault.Invalid:
		return codes.InvalidArgument
	case fault.NotFound:
		return codes.NotFound
	case fault.Precondition:
		return codes.FailedPrecondition
	case fault.Exhausted:
		return codes.ResourceExhausted
	case fault.Unavailable:
		return codes.Unavailable
	case fault.PermissionDenied:
		return codes.PermissionDenied
	case fault.Canceled:
		return codes.Canceled
	}
	return codes.Internal
}
