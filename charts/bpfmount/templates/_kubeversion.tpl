{{/*
bpfmount.requireKubeVersion fails the render on a Kubernetes older than
1.26, the chart's minimum.

Chart.yaml's kubeVersion cannot say this: Helm checks it in a plain `helm
template` too, against its offline default version (v1.20.0 for Helm built
without release flags), so rendering the chart for GitOps tools would fail.
Here the version is checked unless the render is offline: the version has
the form of Helm's default (v1.N.0, which `--kube-version` also gives) and
no cluster answers a lookup. An install or upgrade always talks to the
cluster, so an old cluster is always refused.
*/}}
{{- define "bpfmount.requireKubeVersion" -}}
{{- $min := "1.26.0-0" -}}
{{- $kv := .Capabilities.KubeVersion -}}
{{- if not (semverCompare (printf ">=%s" $min) $kv.Version) -}}
{{- $defaultForm := eq $kv.Version (printf "v%s.%s.0" $kv.Major $kv.Minor) -}}
{{- $cluster := lookup "v1" "Namespace" "" "kube-system" -}}
{{- if or (not $defaultForm) $cluster -}}
{{- fail (printf "bpfmount needs Kubernetes 1.26 or newer; this cluster runs %s. Upgrade the cluster first." $kv.Version) -}}
{{- end -}}
{{- end -}}
{{- end -}}
