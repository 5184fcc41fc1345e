// Package kube records bpfmount's pod events through the Kubernetes API.
package kube

import (
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/bpfmount/bpfmount/driver/events"
)

const (
	component        = "bpfmount"
	maxMessageLength = 1024 // the API server truncates longer notes
)

// Recorder records events through the API server. Recording is
// asynchronous, rate-limited and aggregated by client-go: a publish never
// waits on it.
type Recorder struct {
	rec         record.EventRecorder
	broadcaster record.EventBroadcaster
}

var _ events.Recorder = (*Recorder)(nil)

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

// New returns a recorder that writes through client; node names the event
// source.
func New(client kubernetes.Interface, node string) *Recorder {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &Recorder{
		broadcaster: b,
		rec:         b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component, Host: node}),
	}
}

// Shutdown flushes and stops the recorder.
func (k *Recorder) Shutdown() { k.broadcaster.Shutdown() }

// Warning records a Warning event on the pod.
func (k *Recorder) Warning(p events.Pod, reason, message string) {
	k.record(p, corev1.EventTypeWarning, reason, message)
}

// Normal records a Normal event on the pod.
func (k *Recorder) Normal(p events.Pod, reason, message string) {
	k.record(p, corev1.EventTypeNormal, reason, message)
}

func (k *Recorder) record(p events.Pod, typ, reason, message string) {
	if p.Namespace == "" || p.Name == "" {
		return // a local request: there is no pod to tell
	}
	if len(message) > maxMessageLength {
		message = message[:maxMessageLength-3] + "..."
	}
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: p.Namespace, Name: p.Name, UID: types.UID(p.UID)}
	k.rec.Event(ref, typ, reason, message)
}
