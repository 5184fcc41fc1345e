package kube

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/bpfmount/bpfmount/driver/events"
)

func TestRecorderPostsDedupedEvents(t *testing.T) {
	var mu sync.Mutex
	var got []wireEvent
	var paths, auths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var e wireEvent
		if err := json.Unmarshal(b, &e); err != nil {
			t.Errorf("bad body %s: %v", b, err)
		}
		mu.Lock()
		got = append(got, e)
		paths = append(paths, r.Method+" "+r.URL.Path)
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	r := New(srv.URL, srv.Client(), func() (string, error) { return "tok", nil }, "node-1")
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx)
	defer cancel()

	pod := events.Pod{Namespace: "web", Name: "reader", UID: "u-1"}
	for i := 0; i < 5; i++ { // kubelet retrying a failing mount
		r.Warning(pod, events.ReasonDenied, "namespace \"web\" may not load")
	}
	r.Normal(pod, events.ReasonLoaded, "loaded")
	r.Warning(events.Pod{}, events.ReasonFailed, "local request: no pod") // not sent

	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d events, want 2", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("got %d events, want 2 (duplicates must be dropped): %+v", len(got), got)
	}
	e := got[0]
	if paths[0] != "POST /api/v1/namespaces/web/events" || auths[0] != "Bearer tok" {
		t.Fatalf("request %s with %q", paths[0], auths[0])
	}
	if e.Type != "Warning" || e.Reason != events.ReasonDenied || e.InvolvedObject.Name != "reader" || e.InvolvedObject.UID != "u-1" ||
		e.InvolvedObject.Kind != "Pod" || e.Source.Component != "bpfmount" || e.Source.Host != "node-1" || e.Metadata.Namespace != "web" {
		t.Fatalf("event %+v", e)
	}
	if got[1].Type != "Normal" || got[1].Reason != events.ReasonLoaded {
		t.Fatalf("second event %+v", got[1])
	}
}

func TestInClusterOutsideAPod(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, ok, err := InCluster("n"); ok || err != nil {
		t.Fatalf("ok=%v err=%v outside a pod", ok, err)
	}
}
