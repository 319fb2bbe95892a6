{{- define "terra-ingest.labels" -}}
app.kubernetes.io/name: terra-ingest
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- define "terra-ingest.selector" -}}
app.kubernetes.io/name: terra-ingest
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ingress
{{- end }}
{{- define "terra-ingest.query.selector" -}}
app.kubernetes.io/name: terra-ingest
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: query
{{- end }}
