package integration

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/bpfmount/bpfmount/driver/metrics"
	"github.com/bpfmount/bpfmount/internal/testenv"
)

// scrape returns the value of one sample line of the metrics endpoint, or
// 0 when absent.
func scrape(t *testing.T, srv *httptest.Server, sample string) float64 {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMetricsMoveWithPublish(t *testing.T) {
	d, v, img, dir := setup(t, testenv.XDPCounterObject, testenv.DaemonOptions{})
	srv := httptest.NewServer(metrics.Handler())
	defer srv.Close()
	target := filepath.Join(dir, "vol")
	ctx := context.Background()

	okCount := `bpfmount_publish_duration_seconds_count{code="OK",hook="xdp"}`
	before := scrape(t, srv, okCount)
	if _, err := d.Node.NodePublishVolume(ctx, publishReq("vol-metrics", target, xdpAttrs(img, v.Host), true)); err != nil {
		t.Fatal(err)
	}
	if got := scrape(t, srv, okCount); got != before+1 {
		t.Fatalf("%s went from %v to %v", okCount, before, got)
	}
	if got := scrape(t, srv, "bpfmount_volumes"); got != 1 {
		t.Fatalf("bpfmount_volumes = %v", got)
	}
	if got := scrape(t, srv, fmt.Sprintf(`bpfmount_attachments{hook="xdp",interface=%q}`, v.Host)); got != 1 {
		t.Fatalf("attachments on %s = %v", v.Host, got)
	}
	denials := `bpfmount_policy_denials_total{namespace="other"}` // no policy names "web"
	dBefore := scrape(t, srv, denials)
	d.Node.NodePublishVolume(ctx, publishReq("vol-denied", target+"x", podAttrs(img, v.Host, "web"), true))
	if got := scrape(t, srv, denials); got != dBefore+1 {
		t.Fatalf("%s went from %v to %v", denials, dBefore, got)
	}
	unCount := `bpfmount_unpublish_duration_seconds_count{code="OK",hook="xdp"}`
	uBefore := scrape(t, srv, unCount)
	if _, err := d.Node.NodeUnpublishVolume(ctx, unpublishReq("vol-metrics", target)); err != nil {
		t.Fatal(err)
	}
	if got := scrape(t, srv, unCount); got != uBefore+1 {
		t.Fatalf("%s went from %v to %v", unCount, uBefore, got)
	}
	if got := scrape(t, srv, "bpfmount_programs_loaded"); got != 0 {
		t.Fatalf("bpfmount_programs_loaded = %v after unpublish", got)
	}
	d.AssertClean(t, v, target)
}
