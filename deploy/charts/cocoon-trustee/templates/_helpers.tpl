{{- define "cocoon-trustee.labels" -}}
app.kubernetes.io/name: cocoon-trustee
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cocoon-trustee.selector" -}}
app.kubernetes.io/name: cocoon-trustee
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
