{{/* The chart's name, truncated to 63 characters (a DNS label). */}}
{{- define "bertkit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name: RELEASE, or RELEASE-bertkit when the release's name lacks it. */}}
{{- define "bertkit.fullname" -}}
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

{{- define "bertkit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bertkit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bertkit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bertkit.labels" -}}
helm.sh/chart: {{ include "bertkit.chart" . }}
{{ include "bertkit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "bertkit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bertkit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bertkit.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* The Secret holding the API key ("" when there is no key). */}}
{{- define "bertkit.apiKeySecretName" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else if .Values.apiKey.value }}
{{- printf "%s-api-key" (include "bertkit.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "bertkit.apiKeySecretKey" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecretKey | default "api-key" }}
{{- else }}
{{- "api-key" }}
{{- end }}
{{- end }}

{{/*
A CPU quantity ("2", 2, 1.5, "1500m") as whole CPUs, rounded down, at least 1; "" for none.
*/}}
{{- define "bertkit.wholeCpus" -}}
{{- $cpu := toString . }}
{{- if and . (ne $cpu "") }}
{{- if hasSuffix "m" $cpu }}
{{- max 1 (div (trimSuffix "m" $cpu | atoi) 1000) }}
{{- else }}
{{- max 1 (floor (float64 $cpu) | int) }}
{{- end }}
{{- end }}
{{- end }}

{{/* --threads: serve.threads, else the CPU limit, else the CPU request, else "" (bertkit's default). */}}
{{- define "bertkit.threads" -}}
{{- $res := .Values.resources | default dict }}
{{- $limits := $res.limits | default dict }}
{{- $requests := $res.requests | default dict }}
{{- if .Values.serve.threads }}
{{- .Values.serve.threads | int64 }}
{{- else if $limits.cpu }}
{{- include "bertkit.wholeCpus" $limits.cpu }}
{{- else if $requests.cpu }}
{{- include "bertkit.wholeCpus" $requests.cpu }}
{{- end }}
{{- end }}

{{/* A flag's value as a string: integers without Helm's float formatting (1e+07). */}}
{{- define "bertkit.flagValue" -}}
{{- if kindIs "string" . }}
{{- . }}
{{- else if kindIs "float64" . }}
{{- if eq (float64 (int64 .)) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{- define "bertkit.terminationGracePeriodSeconds" -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- .Values.terminationGracePeriodSeconds | int64 }}
{{- else }}
{{- add (.Values.preStopSleepSeconds | default 0 | int64) (.Values.serve.shutdownTimeoutSeconds | int64) 15 }}
{{- end }}
{{- end }}

{{/* Refuses values that cannot work, with the value to set. */}}
{{- define "bertkit.validate" -}}
{{- $source := .Values.models.source }}
{{- if not (has $source (list "image" "pvc" "init")) }}
{{- fail (printf "models.source is %q: use image, pvc or init" $source) }}
{{- end }}
{{- if and (eq $source "pvc") (not .Values.models.pvc.claimName) }}
{{- fail "models.source is pvc: set models.pvc.claimName to an existing PersistentVolumeClaim" }}
{{- end }}
{{- if and (eq $source "init") (not .Values.models.init.image) }}
{{- fail "models.source is init: set models.init.image (and its command) to fill /models" }}
{{- end }}
{{- range .Values.models.plans }}
{{- if or (not .name) (not .path) }}
{{- fail (printf "models.plans: each entry needs name and path, got %v" .) }}
{{- end }}
{{- end }}
{{- $grace := include "bertkit.terminationGracePeriodSeconds" . | int64 }}
{{- $needed := add (.Values.preStopSleepSeconds | default 0 | int64) (.Values.serve.shutdownTimeoutSeconds | int64) }}
{{- if le $grace $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + serve.shutdownTimeoutSeconds (%d), else in-flight requests are killed" $grace $needed) }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.targetCPUUtilizationPercentage }}
{{- $res := .Values.resources | default dict }}
{{- $requests := $res.requests | default dict }}
{{- if not $requests.cpu }}
{{- fail "autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu" }}
{{- end }}
{{- end }}
{{- if and .Values.serve.grpcPort (eq (.Values.serve.grpcPort | int64) (.Values.serve.port | int64)) }}
{{- fail (printf "serve.grpcPort and serve.port are both %v: gRPC needs a port of its own" .Values.serve.port) }}
{{- end }}
{{- if and .Values.apiKey.value .Values.apiKey.existingSecret }}
{{- fail "apiKey: set value or existingSecret, not both" }}
{{- end }}
{{- end }}
