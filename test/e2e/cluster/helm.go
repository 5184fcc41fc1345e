package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// Helm through its Go library (pkg/action), as `helm install/upgrade/
// uninstall` do, with the test's kubeconfig: no helm binary to build.
// The release the cluster installs.
const (
	ReleaseName = "bpfmount"
	ReleaseNS   = "bpfmount"
)

func (c *Cluster) helmConfig() (*action.Configuration, error) {
	flags := genericclioptions.NewConfigFlags(false)
	kc, ns := c.Kubeconfig, ReleaseNS
	flags.KubeConfig, flags.Namespace = &kc, &ns
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, ReleaseNS, "secret", func(string, ...any) {}); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Values are the chart values every install on this cluster needs: the
// driver image imported into containerd (never pulled) with tag, the
// cluster's kubelet root, and a health port (the driver runs in the host
// network). The chart's defaults stand for the rest, its policy included.
func (c *Cluster) Values(tag string, healthPort int) map[string]any {
	return map[string]any{
		"kubeletRootDir": c.KubeletDir,
		"image":          map[string]any{"repository": DriverRepo, "tag": tag, "pullPolicy": "Never"},
		"health":         map[string]any{"port": healthPort},
		"logLevel":       4,
	}
}

// apiEnv is a post-renderer: there is no kube-proxy in the test cluster,
// so the kubernetes Service's cluster IP leads nowhere; the driver (host
// network) reaches the apiserver on 127.0.0.1 instead, for its Events.
type apiEnv struct{ port int }

func (p apiEnv) Run(in *bytes.Buffer) (*bytes.Buffer, error) {
	anchor := []byte("          env:\n")
	if bytes.Count(in.Bytes(), anchor) != 1 {
		return nil, errors.New("post-render: the DaemonSet's env list not found once")
	}
	add := fmt.Sprintf("            - name: KUBERNETES_SERVICE_HOST\n              value: \"127.0.0.1\"\n            - name: KUBERNETES_SERVICE_PORT\n              value: \"%d\"\n", p.port)
	return bytes.NewBuffer(bytes.Replace(in.Bytes(), anchor, append(append([]byte{}, anchor...), add...), 1)), nil
}

// HelmInstall installs the chart in chartDir as `helm install --wait` does.
func (c *Cluster) HelmInstall(ctx context.Context, chartDir string, vals map[string]any) error {
	cfg, err := c.helmConfig()
	if err != nil {
		return err
	}
	ch, err := loader.Load(chartDir)
	if err != nil {
		return err
	}
	in := action.NewInstall(cfg)
	in.ReleaseName, in.Namespace, in.CreateNamespace = ReleaseName, ReleaseNS, true
	in.Wait, in.Timeout = true, 3*time.Minute
	in.PostRenderer = apiEnv{c.APIPort}
	_, err = in.RunWithContext(ctx, ch, vals)
	return err
}

// HelmUpgrade upgrades the release as `helm upgrade --wait` does.
func (c *Cluster) HelmUpgrade(ctx context.Context, chartDir string, vals map[string]any) error {
	cfg, err := c.helmConfig()
	if err != nil {
		return err
	}
	ch, err := loader.Load(chartDir)
	if err != nil {
		return err
	}
	up := action.NewUpgrade(cfg)
	up.Namespace = ReleaseNS
	up.Wait, up.Timeout = true, 3*time.Minute
	up.PostRenderer = apiEnv{c.APIPort}
	_, err = up.RunWithContext(ctx, ReleaseName, ch, vals)
	return err
}

// HelmUninstall uninstalls the release as `helm uninstall --wait` does.
func (c *Cluster) HelmUninstall() error {
	cfg, err := c.helmConfig()
	if err != nil {
		return err
	}
	un := action.NewUninstall(cfg)
	un.Wait, un.Timeout = true, 2*time.Minute
	_, err = un.Run(ReleaseName)
	return err
}
