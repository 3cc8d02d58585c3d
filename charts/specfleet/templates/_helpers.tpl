{{/* Names and labels shared by every template. */}}

{{- define "specfleet.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name alone when it already says specfleet. */}}
{{- define "specfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "specfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selects the operator's pods; immutable once installed, so nothing that changes on upgrade. */}}
{{- define "specfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "specfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "specfleet.labels" -}}
helm.sh/chart: {{ include "specfleet.chart" . }}
{{ include "specfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: specfleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "specfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "specfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: set the name of an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "specfleet.peeringName" -}}
{{- default (include "specfleet.fullname" .) .Values.ha.peeringName -}}
{{- end -}}

{{/* Values that the schema cannot check across fields; the message says what to change. */}}
{{- define "specfleet.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.ha.enabled) -}}
{{- fail (printf "replicaCount: %d needs ha.enabled: true, or two operators would act on the same models at once; set ha.enabled=true or replicaCount=1" (int .Values.replicaCount)) -}}
{{- end -}}
{{- end -}}
