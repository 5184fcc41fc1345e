// Package events turns load failures and policy denials into Kubernetes
// Events on the pod, so `kubectl describe pod` shows why its volume did not
// mount, next to kubelet's own retry messages.
//
// It is optional: without a Kubernetes client the driver only logs.
package events

import (
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
)

// Pod identifies the pod an event is about.
type Pod struct {
	Namespace, Name, UID string
}

// Reasons, in the style of Kubernetes event reasons.
const (
	ReasonDenied     = "LoadDenied"
	ReasonFailed     = "LoadFailed"
	ReasonLoaded     = "ProgramLoaded"
	ReasonDetached   = "ProgramDetached"
	reasonComponent  = "bpfmount"
	maxMessageLength = 1024 // the API server truncates longer notes
)

// Recorder records events on pods.
type Recorder interface {
	Warning(pod Pod, reason, message string)
	Normal(pod Pod, reason, message string)
}

// Discard records nothing.
type Discard struct{}

func (Discard) Warning(Pod, string, string) {}
func (Discard) Normal(Pod, string, string)  {}

// Kube records events through the API server. Recording is asynchronous,
// rate-limited and aggregated by client-go: a publish never waits on it.
type Kube struct {
	rec         record.EventRecorder
	broadcaster record.EventBroadcaster
}

// Config returns a client configuration: the kubeconfig file when given,
// else the in-cluster service account. ok is false when neither exists.
func Config(kubeconfig string) (cfg *rest.Config, ok bool, err error) {
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		return cfg, err == nil, err
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, false, nil
	}
	cfg, err = rest.InClusterConfig()
	return cfg, err == nil, err
}

// NewKube returns a recorder that writes through client; node names the
// event source.
func NewKube(client kubernetes.Interface, node string) *Kube {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &Kube{
		broadcaster: b,
		rec:         b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: reasonComponent, Host: node}),
	}
}

// Shutdown flushes and stops the recorder.
func (k *Kube) Shutdown() { k.broadcaster.Shutdown() }

func (k *Kube) Warning(p Pod, reason, message string) {
	k.record(p, corev1.EventTypeWarning, reason, message)
}
func (k *Kube) Normal(p Pod, reason, message string) {
	k.record(p, corev1.EventTypeNormal, reason, message)
}

func (k *Kube) record(p Pod, typ, reason, message string) {
	if p.Namespace == "" || p.Name == "" {
		return // a local request: there is no pod to tell
	}
	if len(message) > maxMessageLength {
		message = message[:maxMessageLength-1] + "…"
	}
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: p.Namespace, Name: p.Name, UID: types.UID(p.UID)}
	k.rec.Event(ref, typ, reason, fmt.Sprint(message))
}
