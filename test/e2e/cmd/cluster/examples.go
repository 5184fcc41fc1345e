package main

import (
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	kcluster "github.com/bpfmount/bpfmount/test/e2e/cluster"
)

// exampleInterface is where the example program attaches on this cluster:
// the node's loopback, which carries traffic of its own (the components
// talk over 127.0.0.1), so the counts rise without anything sent.
const exampleInterface = "lo"

// writeExamples writes deploy/examples/xdp-counter-pod.yaml as it runs on
// this cluster: the bytecode from the local layout BytecodeLayouts wrote
// (which the chart's default policy allows for the examples' namespace),
// the reader image imported into containerd, the loopback interface. It
// returns the file's path.
func writeExamples(repo, work string) (string, error) {
	src := filepath.Join(repo, "deploy", "examples", "xdp-counter-pod.yaml")
	b, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(b, &pod); err != nil {
		return "", fmt.Errorf("%s: %w", src, err)
	}
	n := 0
	for _, v := range pod.Spec.Volumes {
		if v.CSI != nil && v.CSI.Driver == "csi.bpfmount.io" {
			v.CSI.VolumeAttributes["image"] = "oci:" + kcluster.CounterLayout + ":v1"
			v.CSI.VolumeAttributes["interface"] = exampleInterface
			n++
		}
	}
	if n != 1 || len(pod.Spec.Containers) != 1 {
		return "", fmt.Errorf("%s: want one container and one bpfmount volume, found %d containers and %d volumes", src, len(pod.Spec.Containers), n)
	}
	pod.Spec.Containers[0].Image = kcluster.ReaderImage
	pod.Spec.Containers[0].ImagePullPolicy = corev1.PullNever
	out, err := yaml.Marshal(&pod)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(work, "examples")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "xdp-counter-pod.yaml")
	head := "# deploy/examples/xdp-counter-pod.yaml for the local cluster (`make cluster`).\n"
	return path, os.WriteFile(path, append([]byte(head), out...), 0o644)
}
