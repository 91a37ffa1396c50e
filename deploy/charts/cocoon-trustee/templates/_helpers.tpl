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

{{- /* An attribute value of a pkcs11: URI (RFC 7512): every byte but the
unreserved ones percent-encoded (urlquery writes a space as "+"). */ -}}
{{- define "cocoon-trustee.pk11" -}}
{{- . | urlquery | replace "+" "%20" -}}
{{- end -}}

{{- /* The --kek URI of kek.pkcs11: the PIN from its Secret's volume. */ -}}
{{- define "cocoon-trustee.kekUri" -}}
{{- $h := .Values.kek.pkcs11 -}}
pkcs11:token={{ include "cocoon-trustee.pk11" $h.token }};object={{ include "cocoon-trustee.pk11" $h.object }}?module-path={{ include "cocoon-trustee.pk11" $h.modulePath | replace "%2F" "/" }}&pin-source=file:/etc/cocoon/hsm-pin/pin
{{- end -}}
