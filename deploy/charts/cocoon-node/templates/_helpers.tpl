{{- define "cocoon-node.labels" -}}
app.kubernetes.io/name: cocoon-node
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The flags every `cocoon node` command takes, one argv item each (no shell). */}}
{{- define "cocoon-node.flags" -}}
- "--host-root=/host"
- {{ printf "--prefix=%s" .Values.node.prefix | quote }}
- {{ printf "--containerd-config=%s" .Values.node.containerdConfig | quote }}
- {{ printf "--runtime-endpoint=%s" .Values.node.runtimeEndpoint | quote }}
{{- with .Values.node.restartCommand }}
- {{ printf "--restart-command=%s" . | quote }}
{{- end }}
{{- end -}}
