{{- define "cocoon-node.labels" -}}
app.kubernetes.io/name: cocoon-node
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cocoon-node.flags" -}}
--host-root /host --prefix {{ .Values.node.prefix }} --containerd-config {{ .Values.node.containerdConfig }} --runtime-endpoint {{ .Values.node.runtimeEndpoint }}
{{- if .Values.node.restartCommand }} --restart-command {{ .Values.node.restartCommand | squote }}{{ end }}
{{- end -}}
