// Package kube records bpfmount's pod events through the Kubernetes API
// server, with the pod's in-cluster service account.
//
// It speaks the one call it needs (POST an Event) with net/http rather than
// client-go: client-go's type registry alone doubled the daemon's resident
// memory (18 MiB → 35 MiB) and tripled its binary, on every node, for a
// feature that sends a few events an hour.
package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/bpfmount/bpfmount/driver/events"
)

// Where a pod finds its service account credentials.
const (
	tokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	caPath    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

const (
	component        = "bpfmount"
	maxMessageLength = 1024            // the API server truncates longer notes
	queueLength      = 256             // events waiting to be sent; more are dropped
	dedupeWindow     = 5 * time.Minute // the same event on the same pod is sent once per window
)

// Recorder sends events in the background: Warning and Normal never block
// a publish. Identical events on one pod within five minutes are sent once
// (kubelet retries a failing mount every few seconds).
type Recorder struct {
	base  string
	http  *http.Client
	token func() (string, error)
	node  string

	queue chan event
	mu    sync.Mutex
	sent  map[string]time.Time
	done  chan struct{}
}

var _ events.Recorder = (*Recorder)(nil)

type event struct {
	pod              events.Pod
	typ, reason, msg string
	at               time.Time
}

// InCluster returns a recorder using the pod's service account, or ok false
// when the daemon does not run in a pod.
func InCluster(node string) (r *Recorder, ok bool, err error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, false, nil
	}
	ca, err := os.ReadFile(caPath)
	if err != nil {
		return nil, false, fmt.Errorf("reading the service account CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, false, errors.New("the service account CA holds no certificate")
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	// The kubelet rotates the projected token: read it for every request.
	token := func() (string, error) {
		b, err := os.ReadFile(tokenPath)
		return strings.TrimSpace(string(b)), err
	}
	return New("https://"+net.JoinHostPort(host, port), client, token, node), true, nil
}

// New returns a recorder that posts to the API server at base.
func New(base string, client *http.Client, token func() (string, error), node string) *Recorder {
	return &Recorder{
		base: strings.TrimSuffix(base, "/"), http: client, token: token, node: node,
		queue: make(chan event, queueLength), sent: map[string]time.Time{}, done: make(chan struct{}),
	}
}

// Warning records a Warning event on the pod.
func (r *Recorder) Warning(p events.Pod, reason, message string) {
	r.enqueue(p, "Warning", reason, message)
}

// Normal records a Normal event on the pod.
func (r *Recorder) Normal(p events.Pod, reason, message string) {
	r.enqueue(p, "Normal", reason, message)
}

func (r *Recorder) enqueue(p events.Pod, typ, reason, msg string) {
	if p.Namespace == "" || p.Name == "" {
		return // a local request: there is no pod to tell
	}
	if len(msg) > maxMessageLength {
		msg = msg[:maxMessageLength-3] + "..."
	}
	now := time.Now()
	key := p.Namespace + "/" + p.Name + "/" + p.UID + "/" + reason + "/" + msg
	r.mu.Lock()
	for k, t := range r.sent { // keep the map small
		if now.Sub(t) > dedupeWindow {
			delete(r.sent, k)
		}
	}
	if t, ok := r.sent[key]; ok && now.Sub(t) < dedupeWindow {
		r.mu.Unlock()
		return
	}
	r.sent[key] = now
	r.mu.Unlock()
	select {
	case r.queue <- event{pod: p, typ: typ, reason: reason, msg: msg, at: now}:
	default:
		klog.V(2).InfoS("Event queue full; dropping event", "pod", p.Namespace+"/"+p.Name, "reason", reason)
	}
}

// Run sends queued events until ctx is done.
func (r *Recorder) Run(ctx context.Context) {
	defer close(r.done)
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-r.queue:
			if err := r.post(ctx, e); err != nil {
				klog.ErrorS(err, "Recording an event on the pod", "pod", e.pod.Namespace+"/"+e.pod.Name, "reason", e.reason)
			}
		}
	}
}

// wireEvent is the part of core/v1 Event that bpfmount fills in.
type wireEvent struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		GenerateName string `json:"generateName"`
		Namespace    string `json:"namespace"`
	} `json:"metadata"`
	InvolvedObject struct {
		Kind       string `json:"kind"`
		APIVersion string `json:"apiVersion"`
		Namespace  string `json:"namespace"`
		Name       string `json:"name"`
		UID        string `json:"uid,omitempty"`
	} `json:"involvedObject"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Type    string `json:"type"`
	Source  struct {
		Component string `json:"component"`
		Host      string `json:"host,omitempty"`
	} `json:"source"`
	FirstTimestamp      string `json:"firstTimestamp"`
	LastTimestamp       string `json:"lastTimestamp"`
	Count               int    `json:"count"`
	ReportingController string `json:"reportingComponent"`
	ReportingInstance   string `json:"reportingInstance,omitempty"`
}

func (r *Recorder) post(ctx context.Context, e event) error {
	var w wireEvent
	w.APIVersion, w.Kind = "v1", "Event"
	w.Metadata.GenerateName = e.pod.Name + "."
	w.Metadata.Namespace = e.pod.Namespace
	w.InvolvedObject.Kind, w.InvolvedObject.APIVersion = "Pod", "v1"
	w.InvolvedObject.Namespace, w.InvolvedObject.Name, w.InvolvedObject.UID = e.pod.Namespace, e.pod.Name, e.pod.UID
	w.Reason, w.Message, w.Type = e.reason, e.msg, e.typ
	w.Source.Component, w.Source.Host = component, r.node
	ts := e.at.UTC().Format(time.RFC3339)
	w.FirstTimestamp, w.LastTimestamp, w.Count = ts, ts, 1
	w.ReportingController, w.ReportingInstance = component, r.node
	body, err := json.Marshal(&w)
	if err != nil {
		return err
	}
	u := r.base + "/api/v1/namespaces/" + url.PathEscape(e.pod.Namespace) + "/events"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if r.token != nil {
		tok, err := r.token()
		if err != nil {
			return fmt.Errorf("reading the service account token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the API server answered %s (the driver's ServiceAccount needs create on events)", resp.Status)
	}
	return nil
}
