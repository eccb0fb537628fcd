{{/* Names are cut to 63 characters, the limit of a DNS label and of a label value. */}}
{{- define "collm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's prefix for every object it installs. */}}
{{- define "collm.fullname" -}}
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

{{/* The operator's objects: "<fullname>-operator", or just the fullname when it says so. */}}
{{- define "collm.operatorName" -}}
{{- $full := include "collm.fullname" . }}
{{- if hasSuffix "operator" $full }}
{{- $full }}
{{- else }}
{{- printf "%s-operator" ($full | trunc 54 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{- define "collm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the operator pods. app.kubernetes.io/name is not "collm" here: the operator
labels the workloads it renders app.kubernetes.io/name=collm, and its own pods must not match
their selectors.
*/}}
{{- define "collm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "collm.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "collm.labels" -}}
helm.sh/chart: {{ include "collm.chart" . }}
{{ include "collm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: collm
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "collm.serviceAccountName" -}}
{{- default (include "collm.operatorName" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "collm.leaseName" -}}
{{- default (printf "%s-leader" (include "collm.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
An image reference from {repository, tag, digest} and the shared registry and tag:
  include "collm.image" (dict "image" .Values.image.edgeAgent "root" . "defaultTag" "...")
A digest wins over a tag; an empty tag falls back to defaultTag.
*/}}
{{- define "collm.image" -}}
{{- $registry := .root.Values.image.registry | trimSuffix "/" }}
{{- $repository := .image.repository }}
{{- if $registry }}
{{- $repository = printf "%s/%s" $registry $repository }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- $tag := default .defaultTag .image.tag }}
{{- if not $tag }}
{{- fail (printf "image %s needs a tag or a digest" .image.repository) }}
{{- end }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* Tag of the collm images when theirs is empty. */}}
{{- define "collm.defaultTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* ClusterRoles the operator binds to each model's edge and cloud ServiceAccounts. */}}
{{- define "collm.edgeAgentRole" -}}
{{- printf "%s-edge-agent" (include "collm.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{- define "collm.cloudWorkerRole" -}}
{{- printf "%s-cloud-worker" (include "collm.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}
