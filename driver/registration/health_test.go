package registration

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestHealthOK(t *testing.T) {
	h := HealthHandler(func(context.Context) error { return nil })
	code, body := get(t, h, http.MethodGet, "/healthz")
	if code != http.StatusOK || body != "ok" {
		t.Errorf("GET /healthz = %d %q, want 200 \"ok\"", code, body)
	}
	if code, _ := get(t, h, http.MethodHead, "/healthz"); code != http.StatusOK {
		t.Errorf("HEAD /healthz = %d, want 200", code)
	}
}

func TestHealthFailing(t *testing.T) {
	h := HealthHandler(func(context.Context) error { return errors.New("csi socket: connection refused") })
	code, body := get(t, h, http.MethodGet, "/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
		t.Errorf("GET /healthz = %d %q, want 503 with the error", code, body)
	}
}

func TestHealthPanickingProbe(t *testing.T) {
	h := HealthHandler(func(context.Context) error { panic("boom") })
	code, body := get(t, h, http.MethodGet, "/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "boom") {
		t.Errorf("GET /healthz = %d %q, want 503 naming the panic", code, body)
	}
}

func TestHealthSlowProbe(t *testing.T) {
	const timeout = 100 * time.Millisecond
	release := make(chan struct{})
	defer close(release)
	sawDeadline := make(chan bool, 2)
	probes := map[string]func(context.Context) error{
		// Honours its context: returns the context's error at the deadline.
		"context-aware": func(ctx context.Context) error {
			_, ok := ctx.Deadline()
			sawDeadline <- ok
			<-ctx.Done()
			return ctx.Err()
		},
		// Ignores its context: the handler must answer anyway.
		"stuck": func(context.Context) error { <-release; return nil },
	}
	for name, probe := range probes {
		t.Run(name, func(t *testing.T) {
			h := healthHandler{probe: probe, timeout: timeout}
			start := time.Now()
			code, body := get(t, h, http.MethodGet, "/healthz")
			took := time.Since(start)
			if code != http.StatusServiceUnavailable {
				t.Errorf("GET /healthz = %d %q, want 503", code, body)
			}
			if took > timeout+2*time.Second {
				t.Errorf("answered after %s, want about %s", took, timeout)
			}
		})
	}
	if !<-sawDeadline {
		t.Error("the probe's context had no deadline")
	}
}

func TestHealthDefaultTimeout(t *testing.T) {
	// The real handler: a probe slower than 2 s fails, and the response
	// comes at about 2 s.
	if testing.Short() {
		t.Skip("takes 2 s")
	}
	h := HealthHandler(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	start := time.Now()
	code, _ := get(t, h, http.MethodGet, "/healthz")
	took := time.Since(start)
	if code != http.StatusServiceUnavailable {
		t.Errorf("code = %d, want 503", code)
	}
	if took < HealthTimeout-100*time.Millisecond || took > HealthTimeout+2*time.Second {
		t.Errorf("answered after %s, want about %s", took, HealthTimeout)
	}
}

func TestHealthOtherPathsAndMethods(t *testing.T) {
	called := false
	h := HealthHandler(func(context.Context) error { called = true; return nil })
	if code, _ := get(t, h, http.MethodGet, "/"); code != http.StatusNotFound {
		t.Errorf("GET / = %d, want 404", code)
	}
	if code, _ := get(t, h, http.MethodPost, "/healthz"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d, want 405", code)
	}
	if called {
		t.Error("the probe ran for a request that is not a health check")
	}
}

func TestHealthWithCheck(t *testing.T) {
	// Check composes with HealthHandler; with Serve not running it passes.
	h := HealthHandler(Check)
	if code, body := get(t, h, http.MethodGet, "/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz with Check = %d %q, want 200", code, body)
	}
}
