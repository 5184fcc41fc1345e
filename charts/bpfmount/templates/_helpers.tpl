{{/* Chart name, overridable. */}}
{{- define "bpfmount.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name for namespaced objects: the release name, with the chart name
appended unless the release name already contains it. */}}
{{- define "bpfmount.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bpfmount.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bpfmount.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bpfmount.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bpfmount.labels" -}}
helm.sh/chart: {{ include "bpfmount.chart" . }}
{{ include "bpfmount.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: csi-node-plugin
app.kubernetes.io/part-of: bpfmount
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "bpfmount.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bpfmount.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bpfmount.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The CSI driver name: fixed, it is the driver's identity in the cluster
and in every pod's volumes. */}}
{{- define "bpfmount.driverName" -}}csi.bpfmount.io{{- end }}

{{/* The driver's directory under kubelet's plugins directory, holding the
CSI socket kubelet dials. */}}
{{- define "bpfmount.pluginDir" -}}
{{- printf "%s/plugins/%s" .Values.kubeletRootDir (include "bpfmount.driverName" .) }}
{{- end }}

{{/* The policy document, from .Values.policy. Each rule starts with its
name, the rest of its fields follow in alphabetical order. */}}
{{- define "bpfmount.policy" -}}
apiVersion: bpfmount.io/v1alpha1
kind: NodePolicy
{{- with .Values.policy.rules }}
rules:
{{- range . }}
  - name: {{ .name | toJson }}
    {{- with omit . "name" }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
{{- else }}
rules: []
{{- end }}
{{- with .Values.policy.local }}
local:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.policy.keepAttached }}
keepAttached:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The node programs file (kind NodePrograms, see docs/lifetimes.md).
*/}}
{{- define "bpfmount.programs" -}}
apiVersion: bpfmount.io/v1alpha1
kind: NodePrograms
{{- with .Values.programs }}
programs:
{{- range . }}
  - name: {{ .name | toJson }}
    attributes:
      {{- range $k, $v := .attributes }}
      {{ $k | toJson }}: {{ $v | toString | toJson }}
      {{- end }}
{{- end }}
{{- else }}
programs: []
{{- end }}
{{- end }}
