{{/* vim: set filetype=mustache: */}}
{{/*
Expand the name of the chart.
*/}}
{{- define "driftmon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "driftmon.fullname" -}}
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

{{/*
Name of an object derived from the full name: "<fullname>-<suffix>", still at most 63 characters.
Usage: include "driftmon.fullnameWithSuffix" (list . "baseline")
*/}}
{{- define "driftmon.fullnameWithSuffix" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $room := sub 62 (len $suffix) | int }}
{{- printf "%s-%s" (include "driftmon.fullname" $ctx | trunc $room | trimSuffix "-") $suffix }}
{{- end }}

{{/*
Chart name and version as used by the chart label.
*/}}
{{- define "driftmon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "driftmon.labels" -}}
helm.sh/chart: {{ include "driftmon.chart" . }}
{{ include "driftmon.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: driftmon
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: only name and instance, so that they never change after the first install.
*/}}
{{- define "driftmon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "driftmon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "driftmon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "driftmon.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: registry/repository, then @digest or :tag (tag defaults to the appVersion).
*/}}
{{- define "driftmon.image" -}}
{{- $repo := .Values.image.repository }}
{{- with .Values.image.registry }}
{{- $repo = printf "%s/%s" . $repo }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Fixed paths inside the container. */}}
{{- define "driftmon.configDir" -}}/etc/driftmon{{- end }}
{{- define "driftmon.configPath" -}}/etc/driftmon/driftmon.yaml{{- end }}
{{- define "driftmon.baselineDir" -}}/etc/driftmon-baseline{{- end }}
{{- define "driftmon.stateDir" -}}/var/lib/driftmon{{- end }}
{{- define "driftmon.webDir" -}}/etc/driftmon-web{{- end }}

{{/* "HTTPS" when the endpoints are served over TLS (webConfig), else "HTTP". */}}
{{- define "driftmon.httpScheme" -}}
{{- if and .Values.webConfig.enabled .Values.webConfig.tls }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}
{{/*
"true" when driftmon's /readyz gates its pod (the container gets a readiness probe), else "".
In sidecar mode /readyz (503 while Kafka is unreachable) would take the model server's whole pod out
of its Services, a native sidecar's readiness counting towards the pod's too: opt-in only.
*/}}
{{- define "driftmon.readinessGated" -}}
{{- if and .Values.readinessProbe.enabled (or (ne .Values.mode "sidecar") .Values.sidecar.readinessProbe.enabled) }}true{{ end }}
{{- end }}

{{/* Name of the container port; unique enough not to clash with a model server's ports. */}}
{{- define "driftmon.portName" -}}driftmon-http{{- end }}

{{/*
Check the values that the schema cannot: one baseline source, no inline secrets,
mode-specific switches. Renders nothing; fails with a message that names the value.
*/}}
{{- define "driftmon.validate" -}}
{{- $b := .Values.baseline }}
{{- $sources := list }}
{{- if $b.configMap.name }}{{ $sources = append $sources "baseline.configMap.name" }}{{ end }}
{{- if $b.configMap.content }}{{ $sources = append $sources "baseline.configMap.content" }}{{ end }}
{{- if $b.secret.name }}{{ $sources = append $sources "baseline.secret.name" }}{{ end }}
{{- if $b.volume }}{{ $sources = append $sources "baseline.volume" }}{{ end }}
{{- if eq (len $sources) 0 }}
{{- fail "baseline: driftmon needs a baseline file: set one of baseline.configMap.name, baseline.configMap.content, baseline.secret.name or baseline.volume" }}
{{- else if gt (len $sources) 1 }}
{{- fail (printf "baseline: set only one baseline source, got %s" (join ", " $sources)) }}
{{- end }}
{{- $cfg := .Values.config | default dict }}
{{- if not $cfg.model }}
{{- fail "config.model: required (the model name that labels every metric)" }}
{{- end }}
{{- if not (dig "kafka" "bootstrap_servers" "" $cfg) }}
{{- fail "config.kafka.bootstrap_servers: required" }}
{{- end }}
{{- if hasKey $cfg "baseline" }}
{{- fail "config.baseline: set by the chart from baseline.*; remove it from config" }}
{{- end }}
{{- with dig "http" "port" nil $cfg }}
{{- if ne (int .) (int $.Values.containerPort) }}
{{- fail "config.http.port: set by the chart; use containerPort instead" }}
{{- end }}
{{- end }}
{{- if hasKey (get $cfg "http" | default dict) "web_config_file" }}
{{- fail "config.http.web_config_file: set by the chart; use webConfig.secretName (the probes and the ServiceMonitor follow it)" }}
{{- end }}
{{- if and .Values.webConfig.enabled (not .Values.webConfig.secretName) }}
{{- fail "webConfig.secretName: required with webConfig.enabled (a Secret holding the web config file)" }}
{{- end }}
{{- if and .Values.webConfig.tlsSecretName (not .Values.webConfig.enabled) }}
{{- fail "webConfig.tlsSecretName: needs webConfig.enabled" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (eq .Values.serviceMonitor.scheme "http") (eq (include "driftmon.httpScheme" .) "HTTPS") }}
{{- fail "serviceMonitor.scheme: http cannot scrape endpoints served over TLS (webConfig.tls); use https or leave it empty" }}
{{- end }}
{{- with dig "state" "dir" nil $cfg }}
{{- if ne . (include "driftmon.stateDir" $) }}
{{- fail (printf "config.state.dir: set by the chart to %s (the state volume); remove it from config" (include "driftmon.stateDir" $)) }}
{{- end }}
{{- end }}
{{- include "driftmon.validateNoSecrets" (dict "path" "config" "value" $cfg) }}
{{- /* the variables driftmon reads secrets from: its defaults and any a config `*_env` key names */}}
{{- $secretVars := list "DRIFTMON_KAFKA_SASL_PASSWORD" "DRIFTMON_KAFKA_SSL_KEY_PASSWORD" "DRIFTMON_PAGERDUTY_ROUTING_KEY" }}
{{- range regexFindAll "[a-z_]+_env: *[\"']?[A-Za-z_][A-Za-z0-9_]*" (toYaml $cfg) -1 }}
{{- $secretVars = append $secretVars (regexReplaceAll "^[a-z_]+_env: *[\"']?" . "") }}
{{- end }}
{{- range $i, $e := .Values.env }}
{{- if and (hasKey $e "value") (or (regexMatch "(?i)(password|passwd|secret|token|api_?key)$" ($e.name | default "")) (has ($e.name | default "") $secretVars)) }}
{{- fail (printf "env[%d] (%s): a secret must not be inline in values; use valueFrom.secretKeyRef" $i $e.name) }}
{{- end }}
{{- end }}
{{- if eq .Values.mode "sidecar" }}
{{- if .Values.podDisruptionBudget.enabled }}
{{- fail "podDisruptionBudget.enabled: only for mode=deployment; in sidecar mode the model server's chart owns the pod's disruption budget" }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
{{- fail "networkPolicy.enabled: only for mode=deployment; in sidecar mode a policy would isolate the model server's pod, which its own chart owns" }}
{{- end }}
{{- else }}
{{- if and .Values.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "persistence.enabled: needs replicaCount 1, since every replica needs its own state directory; for one monitor over many replicas set config.cluster.enabled (state in Kafka, emptyDir)" }}
{{- end }}
{{- end }}
{{- $cluster := .Values.config.cluster | default dict }}
{{- if and $cluster.enabled (not ((.Values.config.window | default dict).duration)) }}
{{- fail "config.cluster.enabled: needs config.window.duration (count windows are per process)" }}
{{- end }}
{{- if and $cluster.enabled (dig "kafka" "labels_topic" "" .Values.config) (not (dig "labels" "window_duration" "" .Values.config)) }}
{{- fail "config.cluster.enabled with config.kafka.labels_topic: needs config.labels.window_duration (count windows of labelled predictions are per process)" }}
{{- end }}
{{- end }}

{{/*
Fails if a key ending in password/secret/token holds a value anywhere in a tree.
Usage: include "driftmon.validateNoSecrets" (dict "path" "config" "value" .Values.config)
*/}}
{{- define "driftmon.validateNoSecrets" -}}
{{- $path := .path }}
{{- if kindIs "map" .value }}
{{- range $k, $v := .value }}
{{- $p := printf "%s.%s" $path $k }}
{{- if and (regexMatch "(?i)(password|passwd|secret|token|api_?key)$" $k) (not (kindIs "map" $v)) (not (empty $v)) }}
{{- fail (printf "%s: a secret must not be inline in values; pass it as an environment variable from a Secret (env[].valueFrom.secretKeyRef), e.g. DRIFTMON_KAFKA_SASL_PASSWORD" $p) }}
{{- end }}
{{- include "driftmon.validateNoSecrets" (dict "path" $p "value" $v) }}
{{- end }}
{{- else if kindIs "slice" .value }}
{{- range $i, $v := .value }}
{{- include "driftmon.validateNoSecrets" (dict "path" (printf "%s[%d]" $path $i) "value" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
driftmon.yaml: the values' config with the keys the chart owns (http.port, state.dir, baseline).
*/}}
{{- define "driftmon.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $http := deepCopy (get $cfg "http" | default dict) }}
{{- $_ := set $http "port" (int .Values.containerPort) }}
{{- if .Values.webConfig.enabled }}
{{- $_ = set $http "web_config_file" (printf "%s/%s" (include "driftmon.webDir" .) .Values.webConfig.key) }}
{{- end }}
{{- $_ = set $cfg "http" $http }}
{{- $state := deepCopy (get $cfg "state" | default dict) }}
{{- $_ = set $state "dir" (include "driftmon.stateDir" .) }}
{{- $_ = set $cfg "state" $state }}
{{- $_ = set $cfg "baseline" (printf "%s/%s" (include "driftmon.baselineDir" .) .Values.baseline.key) }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Name of the ConfigMap that holds driftmon.yaml.
*/}}
{{- define "driftmon.configMapName" -}}
{{- include "driftmon.fullname" . }}
{{- end }}

{{/*
Name of the state PersistentVolumeClaim.
*/}}
{{- define "driftmon.claimName" -}}
{{- .Values.persistence.existingClaim | default (include "driftmon.fullnameWithSuffix" (list . "state")) }}
{{- end }}

{{/*
The driftmon container, as one item of a list of containers. Used by the Deployment and,
through "driftmon.sidecar.container", by a model server's pod.
*/}}
{{- define "driftmon.container" -}}
- name: driftmon
  image: {{ include "driftmon.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - driftmon
  args:
    - run
    - --config
    - {{ include "driftmon.configPath" . }}
    {{- with .Values.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if and (eq .Values.mode "sidecar") .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: {{ include "driftmon.portName" . }}
      containerPort: {{ .Values.containerPort }}
      protocol: TCP
  {{- with .Values.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.livenessProbe }}
  {{- if .enabled }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ include "driftmon.portName" $ }}
      {{- if eq (include "driftmon.httpScheme" $) "HTTPS" }}
      scheme: HTTPS
      {{- end }}
    {{- toYaml (omit . "enabled") | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with .Values.readinessProbe }}
  {{- if include "driftmon.readinessGated" $ }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ include "driftmon.portName" $ }}
      {{- if eq (include "driftmon.httpScheme" $) "HTTPS" }}
      scheme: HTTPS
      {{- end }}
    {{- toYaml (omit . "enabled") | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: driftmon-config
      mountPath: {{ include "driftmon.configDir" . }}
      readOnly: true
    - name: driftmon-baseline
      mountPath: {{ include "driftmon.baselineDir" . }}
      readOnly: true
    - name: driftmon-state
      mountPath: {{ include "driftmon.stateDir" . }}
    - name: driftmon-tmp
      mountPath: /tmp
    {{- if .Values.webConfig.enabled }}
    - name: driftmon-web
      mountPath: {{ include "driftmon.webDir" . }}
      readOnly: true
    {{- if .Values.webConfig.tlsSecretName }}
    - name: driftmon-web-tls
      mountPath: {{ include "driftmon.webDir" . }}/tls
      readOnly: true
    {{- end }}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
The volumes of the driftmon container, as list items. Names start with "driftmon-" so that they
do not clash with a model server's volumes.
*/}}
{{- define "driftmon.volumes" -}}
- name: driftmon-config
  configMap:
    name: {{ include "driftmon.configMapName" . }}
- name: driftmon-baseline
  {{- $b := .Values.baseline }}
  {{- if $b.configMap.name }}
  configMap:
    name: {{ $b.configMap.name }}
  {{- else if $b.configMap.content }}
  configMap:
    name: {{ include "driftmon.fullnameWithSuffix" (list . "baseline") }}
  {{- else if $b.secret.name }}
  secret:
    secretName: {{ $b.secret.name }}
  {{- else }}
  {{- toYaml $b.volume | nindent 2 }}
  {{- end }}
- name: driftmon-state
  {{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "driftmon.claimName" . }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.persistence.emptyDirSizeLimit }}
  {{- end }}
- name: driftmon-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.webConfig.enabled }}
- name: driftmon-web
  secret:
    secretName: {{ .Values.webConfig.secretName }}
{{- if .Values.webConfig.tlsSecretName }}
- name: driftmon-web-tls
  secret:
    secretName: {{ .Values.webConfig.tlsSecretName }}
{{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod annotations that roll the pods when driftmon's config or inline baseline changes.
*/}}
{{- define "driftmon.checksumAnnotations" -}}
checksum/driftmon-config: {{ include "driftmon.config" . | sha256sum }}
{{- with .Values.baseline.configMap.content }}
checksum/driftmon-baseline: {{ . | sha256sum }}
{{- end }}
{{- end }}

{{/*
Pod labels that the Service (and ServiceMonitor) select in sidecar mode.
*/}}
{{- define "driftmon.sidecarPodLabels" -}}
driftmon/sidecar: {{ include "driftmon.fullname" . }}
{{- end }}

{{/*
Selector of the pods that run driftmon: its own pods in deployment mode, the model server's in sidecar mode.
*/}}
{{- define "driftmon.podSelector" -}}
{{- if eq .Values.mode "sidecar" }}
{{- if .Values.sidecar.podSelector }}
{{- toYaml .Values.sidecar.podSelector }}
{{- else }}
{{- include "driftmon.sidecarPodLabels" . }}
{{- end }}
{{- else }}
{{- include "driftmon.selectorLabels" . }}
{{- end }}
{{- end }}

{{/*
Labels of the `helm test` pod. Not the selector labels: the Service must not select it.
*/}}
{{- define "driftmon.testLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "driftmon.name" . | trunc 58 | trimSuffix "-" }}-test
{{- end }}
