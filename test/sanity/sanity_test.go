// Package sanity runs kubernetes-csi's csi-sanity suite against the real
// driver serving on a temporary socket.
package sanity

import (
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/bpfmount/bpfmount/internal/testenv"
)

func TestSanity(t *testing.T) {
	d := testenv.StartDaemon(t, testenv.DaemonOptions{})
	dir := testenv.ShortTempDir(t)

	cfg := sanity.NewTestConfig()
	cfg.Address = d.Endpoint
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	sanity.GinkgoTest(&cfg)

	RegisterFailHandler(Fail)
	suite, reporter := GinkgoConfiguration()
	// bpfmount is node-only: it has no controller service, so the
	// controller group and the node specs that create volumes through it do
	// not apply. Our integration tests publish and unpublish for real.
	suite.SkipStrings = []string{
		`\[Controller Server\]`,
		`NodeUnpublishVolume should remove target path`,
	}
	RunSpecs(t, "bpfmount CSI sanity", suite, reporter)
}
