{{/*
Templates for a model server's chart that runs driftmon in its own pods (mode=sidecar).
Pass them driftmon's context, which a parent chart has as `.Subcharts.driftmon` (Helm >= 3.7;
use the alias if the dependency has one):

  spec:
    template:
      metadata:
        labels:
          {{- include "driftmon.sidecar.podLabels" .Subcharts.driftmon | nindent 10 }}
        annotations:
          {{- include "driftmon.sidecar.podAnnotations" .Subcharts.driftmon | nindent 10 }}
      spec:
        {{- if .Subcharts.driftmon.Values.sidecar.native }}
        initContainers:
          {{- include "driftmon.sidecar.container" .Subcharts.driftmon | nindent 10 }}
        {{- end }}
        containers:
          - name: model
            ...
          {{- if not .Subcharts.driftmon.Values.sidecar.native }}
          {{- include "driftmon.sidecar.container" .Subcharts.driftmon | nindent 10 }}
          {{- end }}
        volumes:
          {{- include "driftmon.sidecar.volumes" .Subcharts.driftmon | nindent 10 }}

See deploy/helm/examples/model-server for a complete chart.
*/}}

{{/*
The driftmon container as one list item, for `containers` or, with sidecar.native=true, for
`initContainers` (it then carries restartPolicy: Always: a Kubernetes native sidecar).
*/}}
{{- define "driftmon.sidecar.container" -}}
{{- include "driftmon.sidecar.check" . }}
{{- if and .Values.sidecar.native (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "sidecar.native: native sidecars need Kubernetes >= 1.29, the cluster is %s" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- include "driftmon.container" . }}
{{- end }}

{{/*
The volumes that the driftmon container mounts, as list items for the pod's `volumes`.
*/}}
{{- define "driftmon.sidecar.volumes" -}}
{{- include "driftmon.sidecar.check" . }}
{{- include "driftmon.volumes" . }}
{{- end }}

{{/*
Labels for the model server's pod template: the driftmon Service selects pods by them
(unless sidecar.podSelector is set).
*/}}
{{- define "driftmon.sidecar.podLabels" -}}
{{- include "driftmon.sidecar.check" . }}
{{- include "driftmon.sidecarPodLabels" . }}
{{- end }}

{{/*
Annotations for the model server's pod template: they roll the pods when driftmon's config changes.
*/}}
{{- define "driftmon.sidecar.podAnnotations" -}}
{{- include "driftmon.sidecar.check" . }}
{{- include "driftmon.checksumAnnotations" . }}
{{- end }}

{{- define "driftmon.sidecar.check" -}}
{{- if not (and (kindIs "map" .) (hasKey . "Values") (hasKey . "Release")) }}
{{- fail "driftmon.sidecar.*: pass driftmon's context, e.g. include \"driftmon.sidecar.container\" .Subcharts.driftmon" }}
{{- end }}
{{- if ne .Values.mode "sidecar" }}
{{- fail "driftmon.sidecar.*: set the driftmon value mode=sidecar (in mode=deployment driftmon runs its own Deployment)" }}
{{- end }}
{{- end }}
