{{/*
The chart name, overridable; cut to 63 characters (the DNS label limit of names and labels).
*/}}
{{- define "kubeslim.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name of every resource: the release name, plus the chart name unless the release
name already contains it; cut to 63 characters.
*/}}
{{- define "kubeslim.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
chart: name-version, as the helm.sh/chart label wants it.
*/}}
{{- define "kubeslim.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The labels that select the operator Pods; never change them in an upgrade (selectors are immutable).
*/}}
{{- define "kubeslim.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeslim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
The one label block shared by every object of the chart.
*/}}
{{- define "kubeslim.labels" -}}
helm.sh/chart: {{ include "kubeslim.chart" . }}
{{ include "kubeslim.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeslim
{{- end -}}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "kubeslim.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubeslim.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The operator image: repository@digest when a digest is set, else repository:tag (appVersion by default).
*/}}
{{- define "kubeslim.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The namespaces served in namespace scope: rbac.namespaces, or the release namespace.
Rendered as a comma-separated list (KUBESLIM_NAMESPACES reads it so).
*/}}
{{- define "kubeslim.watchNamespaces" -}}
{{- if .Values.rbac.namespaces -}}
{{- join "," .Values.rbac.namespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
kopf peering: on only with more than one replica; the peering object's name.
*/}}
{{- define "kubeslim.peering" -}}
{{- if gt (int .Values.replicas) 1 -}}
{{- include "kubeslim.fullname" . -}}
{{- end -}}
{{- end -}}
