package e2e

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
const (
	releaseName = "bpfmount"
	releaseNS   = "bpfmount"
)

func (c *cluster) helmConfig() (*action.Configuration, error) {
	flags := genericclioptions.NewConfigFlags(false)
	kc, ns := c.kubeconfig, releaseNS
	flags.KubeConfig, flags.Namespace = &kc, &ns
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, releaseNS, "secret", func(string, ...any) {}); err != nil {
		return nil, err
	}
	return cfg, nil
}

// chartValues are the values the test installs the chart with: the
// driver image imported into containerd (never pulled), the test's
// kubelet root, a free health port, and a policy allowing allowedNS to
// load the local OCI layouts under bytecodeDir (and nobody else anything).
func (c *cluster) chartValues(tag string, healthPort int) map[string]any {
	return map[string]any{
		"kubeletRootDir": c.kubeletDir,
		"image":          map[string]any{"repository": driverRepo, "tag": tag, "pullPolicy": "Never"},
		"health":         map[string]any{"port": healthPort},
		"logLevel":       4,
		"policy": map[string]any{"rules": []any{map[string]any{
			"name":         "e2e",
			"namespaces":   []any{allowedNS},
			"images":       []any{"oci:" + bytecodeDir + "/**"},
			"readOnlyOnly": true,
		}}},
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

func (c *cluster) helmInstall(ctx context.Context, chartDir string, vals map[string]any) error {
	cfg, err := c.helmConfig()
	if err != nil {
		return err
	}
	ch, err := loader.Load(chartDir)
	if err != nil {
		return err
	}
	in := action.NewInstall(cfg)
	in.ReleaseName, in.Namespace, in.CreateNamespace = releaseName, releaseNS, true
	in.Wait, in.Timeout = true, 3*time.Minute
	in.PostRenderer = apiEnv{c.apiPort}
	_, err = in.RunWithContext(ctx, ch, vals)
	return err
}

func (c *cluster) helmUpgrade(ctx context.Context, chartDir string, vals map[string]any) error {
	cfg, err := c.helmConfig()
	if err != nil {
		return err
	}
	ch, err := loader.Load(chartDir)
	if err != nil {
		return err
	}
	up := action.NewUpgrade(cfg)
	up.Namespace = releaseNS
	up.Wait, up.Timeout = true, 3*time.Minute
	up.PostRenderer = apiEnv{c.apiPort}
	_, err = up.RunWithContext(ctx, releaseName, ch, vals)
	return err
}

func (c *cluster) helmUninstall() error {
	cfg, err := c.helmConfig()
	if err != nil {
		return err
	}
	un := action.NewUninstall(cfg)
	un.Wait, un.Timeout = true, 2*time.Minute
	_, err = un.Run(releaseName)
	return err
}
