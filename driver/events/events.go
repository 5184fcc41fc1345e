// Package events lets the driver tell a pod why its volume did or did not
// mount: load failures and policy denials become Kubernetes Events on the
// pod, next to kubelet's own retry messages in `kubectl describe pod`.
//
// This package holds only the interface, so the driver does not depend on
// client-go; package kube implements it against the API server.
package events

// Pod identifies the pod an event is about.
type Pod struct {
	Namespace, Name, UID string
}

// Reasons, in the style of Kubernetes event reasons.
const (
	ReasonDenied   = "LoadDenied"
	ReasonFailed   = "LoadFailed"
	ReasonLoaded   = "ProgramLoaded"
	ReasonDetached = "ProgramDetached"
	// A program loaded at publish and attached later, in the pod's own
	// network namespace, or failing to.
	ReasonAttached     = "ProgramAttached"
	ReasonAttachFailed = "AttachFailed"
)

// Recorder records events on pods. Implementations must not block.
type Recorder interface {
	Warning(pod Pod, reason, message string)
	Normal(pod Pod, reason, message string)
}

// Discard records nothing: the driver without a Kubernetes client.
type Discard struct{}

// Warning does nothing.
func (Discard) Warning(Pod, string, string) {}

// Normal does nothing.
func (Discard) Normal(Pod, string, string) {}
