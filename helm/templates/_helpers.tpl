{{/* Names, labels and checks shared by the templates. */}}

{{- define "mamtra.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mamtra.fullname" -}}
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

{{- define "mamtra.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mamtra.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mamtra.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mamtra.labels" -}}
helm.sh/chart: {{ include "mamtra.chart" . }}
{{ include "mamtra.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mamtra.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mamtra.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mamtra.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary (printf "-%s" .Values.image.variant) "" (ne .Values.image.variant ""))) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Name of the Secret holding the API key, empty when the API is open. */}}
{{- define "mamtra.apiKeySecret" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else if .Values.apiKey.value }}
{{- include "mamtra.fullname" . }}
{{- end }}
{{- end }}

{{/*
Prometheus label matchers selecting this release's pods. The ServiceMonitor's targets carry the namespace and the
Service's name as labels, which is what prometheus-adapter and KEDA query by.
*/}}
{{- define "mamtra.promSelector" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "mamtra.fullname" . }}"
{{- end }}

{{/* Per-pod target of mamtra_state_slots_used: maxStreams x targetSlotUtilization, at least one slot. */}}
{{- define "mamtra.slotTarget" -}}
{{- $t := mulf .Values.mamtra.maxStreams .Values.autoscaling.targetSlotUtilization }}
{{- max 1 (floor $t | int) }}
{{- end }}

{{/* Render-time checks that values.schema.json cannot express (they relate two values). */}}
{{- define "mamtra.validate" -}}
{{- $needed := addf .Values.preStopSleepSeconds .Values.mamtra.drainTimeoutS }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) (float64 $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + mamtra.drainTimeoutS (%v), or Kubernetes kills streams mid-drain" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.apiKey.existingSecret .Values.apiKey.value }}
{{- fail "set apiKey.existingSecret or apiKey.value, not both" }}
{{- end }}
{{- end }}
