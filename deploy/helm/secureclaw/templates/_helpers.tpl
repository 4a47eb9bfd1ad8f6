{{/* The chart name, cut to the 63 characters a label value may hold. */}}
{{- define "secureclaw.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name, or release-chart when they differ. */}}
{{- define "secureclaw.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the server's pod. */}}
{{- define "secureclaw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "secureclaw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Labels of every object. */}}
{{- define "secureclaw.labels" -}}
{{ include "secureclaw.selectorLabels" . }}
app.kubernetes.io/part-of: secureclaw
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "secureclaw.serviceAccountName" -}}
{{- default (include "secureclaw.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "secureclaw.claimName" -}}
{{- default (printf "%s-data" (include "secureclaw.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{- define "secureclaw.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
