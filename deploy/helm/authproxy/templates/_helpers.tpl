{{/*
Names and labels shared by the templates, and config.toml rendered from .Values.config.
*/}}

{{/* Base name of every object: the release name unless fullnameOverride is set. */}}
{{- define "authproxy.fullname" -}}
{{- .Values.fullnameOverride | default .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "authproxy.redisName" -}}
{{- printf "%s-redis" (include "authproxy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "authproxy.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "authproxy.fullname" .)) -}}
{{- end -}}

{{/* Where the Secret is mounted; config.toml points client_secret_file and cookie_secret_file here. */}}
{{- define "authproxy.secretDir" -}}
/run/secrets/authproxy
{{- end -}}

{{- define "authproxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Selector labels: they must never change between upgrades (Deployment selectors are immutable). */}}
{{- define "authproxy.selectorLabels" -}}
app.kubernetes.io/name: authproxy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "authproxy.labels" -}}
{{ include "authproxy.selectorLabels" . }}
app.kubernetes.io/component: proxy
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "authproxy.redisSelectorLabels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "authproxy.redisLabels" -}}
{{ include "authproxy.redisSelectorLabels" . }}
app.kubernetes.io/component: session-store
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
config.toml. Each section of .Values.config becomes a [table] and each key `key = <JSON value>`: JSON
strings, numbers, booleans and arrays of strings are valid TOML as they are. Keys set to null are left
out, so authproxy's own default applies. The secret file paths, and the Redis URL of the bundled Redis,
are the chart's to set.
*/}}
{{- define "authproxy.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $secretDir := include "authproxy.secretDir" . -}}
{{- $_ := set $config "centralauth" ($config.centralauth | default dict) -}}
{{- $_ := set $config "session" ($config.session | default dict) -}}
{{- $_ := set $config.centralauth "client_secret_file" (printf "%s/client_secret" $secretDir) -}}
{{- $_ := set $config.session "cookie_secret_file" (printf "%s/cookie_secrets" $secretDir) -}}
{{- if .Values.redis.enabled -}}
{{- $_ := set $config.session "store" "redis" -}}
{{- $_ := set $config.session "redis_url" (printf "redis://%s:6379/0" (include "authproxy.redisName" .)) -}}
{{- end -}}
{{- range $section, $table := omit $config "upstreams" }}
[{{ $section }}]
{{- range $key, $value := $table }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{ end }}
{{- range $config.upstreams }}
[[upstreams]]
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{ end }}
{{- end -}}

{{/* The shortest terminationGracePeriodSeconds that lets a Pod finish its requests after preStop. */}}
{{- define "authproxy.checkGracePeriod" -}}
{{- $grace := .Values.config.server.shutdown_grace | default 25 | int -}}
{{- $needed := add (int .Values.preStopSleepSeconds) $grace 5 -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds must be at least %d (preStopSleepSeconds + config.server.shutdown_grace + 5)" $needed) -}}
{{- end -}}
{{- end -}}
