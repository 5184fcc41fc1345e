package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// scrape returns the text the handler serves.
func scrape(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNodeGauges(t *testing.T) {
	calls := 0
	SetStateFunc(func() State {
		calls++
		return State{
			Volumes: 3,
			Attachments: []Attachment{
				{Interface: "eth0", Hook: "xdp", Attached: true},
				{Interface: "eth0", Hook: "xdp", Attached: true},
				{Interface: "eth1", Hook: "tcx", Attached: true},
				{Interface: "gone0", Hook: "xdp", Attached: false},
			},
			Dispatchers: []Dispatcher{{Interface: "eth0", Hook: "xdp", Revisions: 5}},
		}
	})
	t.Cleanup(func() { SetStateFunc(nil) })
	body := scrape(t)
	for _, want := range []string{
		"bpfmount_volumes 3\n",
		"bpfmount_programs_loaded 4\n",
		`bpfmount_attachments{hook="xdp",interface="eth0"} 2` + "\n",
		`bpfmount_attachments{hook="tcx",interface="eth1"} 1` + "\n",
		"bpfmount_programs_detached 1\n",
		`bpfmount_dispatcher_revisions_total{hook="xdp",interface="eth0"} 5` + "\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	// A detached program has no interface to count it under.
	if strings.Contains(body, `interface="gone0"`) {
		t.Error("a detached program is counted as attached")
	}
	if calls != 1 {
		t.Errorf("the state function ran %d times for one scrape", calls)
	}
}

func TestNoStateFunc(t *testing.T) {
	SetStateFunc(nil)
	body := scrape(t)
	if strings.Contains(body, "bpfmount_volumes") {
		t.Error("node gauges reported without a state function")
	}
	// The process's own metrics are there regardless.
	if !strings.Contains(body, "go_goroutines") {
		t.Error("Go runtime metrics missing")
	}
}

func TestCountersAndHistograms(t *testing.T) {
	PublishDuration.Reset()
	PolicyDenials.Reset()
	PublishDuration.WithLabelValues("xdp", "OK").Observe(0.002)
	PolicyDenials.WithLabelValues("other").Inc()
	ImageFetches.WithLabelValues("cache_hit").Inc()
	InterfaceLost.Inc()
	body := scrape(t)
	for _, want := range []string{
		`bpfmount_publish_duration_seconds_bucket{code="OK",hook="xdp",le="0.0025"} 1`,
		`bpfmount_publish_duration_seconds_count{code="OK",hook="xdp"} 1`,
		`bpfmount_policy_denials_total{namespace="other"} 1`,
		`bpfmount_image_fetches_total{result="cache_hit"}`,
		`bpfmount_attachments_lost_total`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}
