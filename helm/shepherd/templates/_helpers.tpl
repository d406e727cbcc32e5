{{/*
Names. Every object is "<fullname>-<component>" so two releases in one namespace never collide.
*/}}
{{- define "shepherd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shepherd.fullname" -}}
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

{{- define "shepherd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<fullname>-<component>"; call with (dict "root" $ "component" "controller"). */}}
{{- define "shepherd.componentName" -}}
{{- printf "%s-%s" (include "shepherd.fullname" .root | trunc 50 | trimSuffix "-") .component }}
{{- end }}

{{/* The components that run, in a fixed order (the MLflow server only when enabled). */}}
{{- define "shepherd.components" -}}
{{- $components := list "controller" "drift" "webhook" }}
{{- if .Values.mlflow.enabled }}{{ $components = append $components "mlflow" }}{{ end }}
{{- join " " $components }}
{{- end }}

{{/*
Labels. Selector labels never change across upgrades (a Deployment's selector is immutable).
Call the component variants with (dict "root" $ "component" "controller").
*/}}
{{- define "shepherd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shepherd.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "shepherd.labels" -}}
helm.sh/chart: {{ include "shepherd.chart" .root }}
{{ include "shepherd.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: shepherd
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the monitoring objects: the common ones plus what Prometheus' selectors look for. */}}
{{- define "shepherd.monitoringLabels" -}}
{{ include "shepherd.labels" . }}
{{- with .root.Values.monitoring.additionalLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The one image every component runs; pinned by tag (or digest), never "latest". */}}
{{- define "shepherd.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Where every component finds MLflow: the chart's own server or an external one. */}}
{{- define "shepherd.mlflowTrackingUri" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "shepherd.componentName" (dict "root" . "component" "mlflow")) .Release.Namespace (int .Values.mlflow.service.port) }}
{{- else }}
{{- required "mlflow.externalUrl is required when mlflow.enabled is false" .Values.mlflow.externalUrl }}
{{- end }}
{{- end }}

{{/* The Secret holding the webhook's bearer token (the user's, or the one the chart creates). */}}
{{- define "shepherd.webhookSecretName" -}}
{{- .Values.webhook.token.existingSecret | default (printf "%s-token" (include "shepherd.componentName" (dict "root" . "component" "webhook"))) }}
{{- end }}

{{- define "shepherd.webhookSecretKey" -}}
{{- if .Values.webhook.token.existingSecret }}{{ .Values.webhook.token.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* The Secret holding the token feedback must present (the user's, or the one the chart creates). */}}
{{- define "shepherd.feedbackSecretName" -}}
{{- .Values.drift.feedback.token.existingSecret | default (printf "%s-feedback-token" (include "shepherd.componentName" (dict "root" . "component" "drift"))) }}
{{- end }}

{{- define "shepherd.feedbackSecretKey" -}}
{{- if .Values.drift.feedback.token.existingSecret }}{{ .Values.drift.feedback.token.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* Whether the drift service keeps an outcome ledger and takes feedback. */}}
{{- define "shepherd.feedbackEnabled" -}}
{{- if .Values.webhook.featureRepo }}true{{ else }}false{{ end }}
{{- end }}

{{/* The webhook URL Alertmanager posts to. */}}
{{- define "shepherd.webhookUrl" -}}
{{- printf "http://%s.%s.svc:%d/alerts" (include "shepherd.componentName" (dict "root" . "component" "webhook")) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{/* The drift service URL a KServe payload logger posts to. */}}
{{- define "shepherd.driftUrl" -}}
{{- printf "http://%s.%s.svc:%d/" (include "shepherd.componentName" (dict "root" . "component" "drift")) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{/* The container port each component listens on. */}}
{{- define "shepherd.containerPort" -}}
{{- if eq .component "mlflow" }}5000{{ else }}8080{{ end }}
{{- end }}

{{/* The service port each component is reached on. */}}
{{- define "shepherd.servicePort" -}}
{{- if eq .component "mlflow" }}{{ .root.Values.mlflow.service.port }}{{ else }}{{ .root.Values.service.port }}{{ end }}
{{- end }}

{{/* Whether the component talks to the Kubernetes API (only then is a token mounted). */}}
{{- define "shepherd.needsApi" -}}
{{- if has .component (list "controller" "webhook") }}true{{ else }}false{{ end }}
{{- end }}

{{/* The command line of each component (one image, several programs). */}}
{{- define "shepherd.command" -}}
{{- $v := .root.Values }}
{{- if eq .component "controller" }}
- shepherd
- rollout
- controller
- --backend=kubernetes
- --namespace={{ $v.modelNamespace }}
- --metrics=prometheus
- --prometheus-url={{ required "controller.prometheusUrl is required" $v.controller.prometheusUrl }}
- --interval-seconds={{ $v.controller.intervalSeconds }}
- --port=8080
{{- range $v.controller.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- else if eq .component "drift" }}
- python
- -m
- monitoring.drift
- --host=0.0.0.0
- --port=8080
- --window-rows={{ $v.drift.windowRows }}
- --min-rows={{ $v.drift.minRows }}
{{- if eq (include "shepherd.feedbackEnabled" .root) "true" }}
- --quality-window={{ $v.drift.feedback.qualityWindow }}
- --unlabelled-retention-days={{ $v.drift.feedback.unlabelledRetentionDays }}
- --feedback-token-file=/etc/shepherd/feedback/token
{{- end }}
{{- range $v.drift.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- else if eq .component "webhook" }}
- python
- -m
- monitoring.webhook
- --host=0.0.0.0
- --port=8080
- --backend=kubernetes
- --home=/tmp/shepherd
- --cooldown-seconds={{ $v.webhook.retrainCooldownSeconds }}
- --token-file=/etc/shepherd/webhook/token
{{- range $v.webhook.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- else if eq .component "mlflow" }}
- mlflow
- server
- --host=0.0.0.0
- --port=5000
- --workers={{ $v.mlflow.workers }}
- --serve-artifacts
{{- $hosts := list (printf "%s*" (include "shepherd.componentName" (dict "root" .root "component" "mlflow"))) "localhost*" "127.0.0.1*" }}
- --allowed-hosts={{ join "," (concat $hosts $v.mlflow.allowedHosts) }}
{{- range $v.mlflow.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The environment of each component. */}}
{{- define "shepherd.env" -}}
{{- $v := .root.Values }}
- name: HOME
  value: /tmp
{{- if eq .component "mlflow" }}
{{- if $v.mlflow.backendStore.existingSecret }}
- name: MLFLOW_BACKEND_STORE_URI
  valueFrom:
    secretKeyRef:
      name: {{ $v.mlflow.backendStore.existingSecret }}
      key: {{ $v.mlflow.backendStore.existingSecretKey }}
{{- else }}
- name: MLFLOW_BACKEND_STORE_URI
  value: {{ $v.mlflow.backendStore.uri | default "sqlite:////mlflow/mlflow.db" | quote }}
{{- end }}
- name: MLFLOW_ARTIFACTS_DESTINATION
  value: {{ $v.mlflow.artifactsDestination | default "/mlflow/artifacts" | quote }}
{{- else }}
- name: MLFLOW_TRACKING_URI
  value: {{ include "shepherd.mlflowTrackingUri" .root | quote }}
{{- end }}
{{- if and (eq .component "drift") (eq (include "shepherd.feedbackEnabled" .root) "true") }}
{{- /* The outcome ledger lives with the feature store the retraining runs read. */}}
- name: SHEPHERD_FEATURE_REPO
  value: {{ $v.webhook.featureRepo | quote }}
{{- end }}
{{- if eq .component "webhook" }}
- name: SHEPHERD_NAMESPACE
  value: {{ $v.modelNamespace | quote }}
{{- with $v.webhook.kfpHost }}
- name: SHEPHERD_KFP_HOST
  value: {{ . | quote }}
{{- end }}
{{- with $v.webhook.featureRepo }}
- name: SHEPHERD_FEATURE_REPO
  value: {{ . | quote }}
{{- end }}
{{- /* Retraining runs point their predictors' payload logger at the drift service. */}}
- name: SHEPHERD_DRIFT_URL
  value: {{ include "shepherd.driftUrl" .root | quote }}
{{- end }}
{{- with (index $v .component).extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
