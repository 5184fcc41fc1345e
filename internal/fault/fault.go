// Package fault classifies the loader's errors by what the caller can do
// about them, so that the CSI driver can map them to gRPC codes without the
// loader knowing anything of gRPC.
package fault

import (
	"errors"
	"fmt"
)

// Kind says what went wrong from the caller's point of view.
type Kind int

const (
	// Internal is a failure the caller cannot fix (a bug, an unexpected
	// kernel error).
	Internal Kind = iota
	// Invalid means the request or the bytecode is wrong and retrying the
	// same request cannot succeed.
	Invalid
	// NotFound means something the request names does not exist (an image,
	// a tag, an interface).
	NotFound
	// Precondition means the node is not in a state that allows the request
	// (the interface is taken, the kernel lacks a feature, a cache miss with
	// pull policy Never).
	Precondition
	// Exhausted means a fixed capacity is full (dispatcher slots).
	Exhausted
	// Unavailable means a dependency could not be reached; a retry may work.
	Unavailable
	// PermissionDenied means a registry or a signature check refused.
	PermissionDenied
	// Canceled means the caller gave up (context cancelled or timed out).
	Canceled
	// AlreadyExists means the request conflicts with something already in
	// place (a volume published with other attributes, a foreign mount).
	AlreadyExists
	// Aborted means another operation on the same object is in flight; a
	// retry later may succeed.
	Aborted
)

var names = map[Kind]string{
	Internal: "internal", Invalid: "invalid", NotFound: "not found",
	Precondition: "precondition", Exhausted: "exhausted",
	Unavailable: "unavailable", PermissionDenied: "permission denied",
	Canceled: "canceled", AlreadyExists: "already exists", Aborted: "aborted",
}

func (k Kind) String() string { return names[k] }

type classified struct {
	kind Kind
	err  error
}

func (c *classified) Error() string { return c.err.Error() }
func (c *classified) Unwrap() error { return c.err }

// Errorf formats an error of the given kind. %w verbs wrap as usual.
func Errorf(k Kind, format string, args ...any) error {
	return &classified{kind: k, err: fmt.Errorf(format, args...)}
}

// Wrap gives err a kind, keeping its message. A nil err stays nil.
func Wrap(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &classified{kind: k, err: err}
}

// Of returns the kind of the outermost classified error in err's chain, or
// Canceled for context errors, or Internal.
func Of(err error) Kind {
	var c *classified
	if errors.As(err, &c) {
		return c.kind
	}
	if isContextErr(err) {
		return Canceled
	}
	return Internal
}
