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
{{/* A value as TOML: strings quoted, lists as arrays, maps as inline tables. */}}
{{- define "terra-ingest.toml" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ $v | toJson }}
{{- else if kindIs "slice" $v -}}[{{ range $i, $x := $v }}{{ if $i }}, {{ end }}{{ include "terra-ingest.toml" $x }}{{ end }}]
{{- else if kindIs "map" $v -}}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }}, {{ end }}{{ $k | toJson }} = {{ include "terra-ingest.toml" (get $v $k) }}{{ end -}} }
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if kindIs "float64" $v -}}{{ int64 $v }}
{{- else -}}{{ $v }}
{{- end -}}
{{- end }}
{{/* Where endpoint $i's secret $j is mounted. */}}
{{- define "terra-ingest.webhookSecretDir" -}}
/var/run/secrets/terra-ingest/webhooks/{{ index . 0 }}-{{ index . 1 }}
{{- end }}
