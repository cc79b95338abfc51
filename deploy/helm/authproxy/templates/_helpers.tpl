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

{{/* Where redisPassword.existingSecret is mounted; config.toml points redis_password_file here. */}}
{{- define "authproxy.redisSecretDir" -}}
/run/secrets/authproxy-redis
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

{{/* The headless Service the ServiceMonitor selects: the proxy's Pods, seen through their metrics port. */}}
{{- define "authproxy.metricsSelectorLabels" -}}
{{ include "authproxy.selectorLabels" . }}
app.kubernetes.io/component: metrics
{{- end -}}

{{- define "authproxy.metricsLabels" -}}
{{ include "authproxy.metricsSelectorLabels" . }}
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
out, so authproxy's own default applies. The secret file paths, the Redis URL of the bundled Redis and the
Redis password file are the chart's to set.
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
{{- if .Values.redisPassword.existingSecret -}}
{{- $_ := set $config.session "redis_password_file" (printf "%s/%s" (include "authproxy.redisSecretDir" .) .Values.redisPassword.key) -}}
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

{{/* config.server.metrics_listen, or "" when there is no metrics listener. */}}
{{- define "authproxy.metricsListen" -}}
{{- $server := .Values.config.server | default dict -}}
{{- $server.metrics_listen | default "" -}}
{{- end -}}

{{/*
Values that would render objects that cannot work together; each fails the render with the reason.
*/}}
{{- define "authproxy.checkValues" -}}
{{- include "authproxy.checkGracePeriod" . -}}
{{- $listen := include "authproxy.metricsListen" . -}}
{{- if $listen -}}
{{- $port := int .Values.metrics.port -}}
{{- $host := trimSuffix (printf ":%d" $port) $listen -}}
{{- if eq $host $listen -}}
{{- fail (printf "config.server.metrics_listen (%s) must listen on metrics.port (%d)" $listen $port) -}}
{{- end -}}
{{- if eq $host "127.0.0.1" "localhost" "[::1]" -}}
{{- fail "config.server.metrics_listen is a loopback address: nothing outside the container could scrape it; use 0.0.0.0" -}}
{{- end -}}
{{- else if .Values.metrics.serviceMonitor.enabled -}}
{{- fail "metrics.serviceMonitor.enabled needs config.server.metrics_listen, e.g. 0.0.0.0:9100" -}}
{{- end -}}
{{- if and .Values.redisPassword.existingSecret .Values.redis.enabled -}}
{{- fail "redisPassword.existingSecret is for your own Redis: the bundled one (redis.enabled) has no password" -}}
{{- end -}}
{{- $replicas := .Values.replicaCount -}}
{{- if .Values.autoscaling.enabled -}}
{{- $replicas = .Values.autoscaling.minReplicas -}}
{{- $resources := .Values.resources | default dict -}}
{{- $requests := $resources.requests | default dict -}}
{{- if not $requests.cpu -}}
{{- fail "autoscaling.enabled needs resources.requests.cpu: CPU utilization is measured against it" -}}
{{- end -}}
{{- if lt (int .Values.autoscaling.minReplicas) 1 -}}
{{- fail "autoscaling.minReplicas must be at least 1" -}}
{{- end -}}
{{- if lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas) -}}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.upstreamPorts) -}}
{{- fail "networkPolicy.upstreamPorts: list the upstream's ports (config.upstreams), or the proxy could reach no app" -}}
{{- end -}}
{{- if .Values.pdb.enabled -}}
{{- $min := .Values.pdb.minAvailable -}}
{{- $max := .Values.pdb.maxUnavailable -}}
{{- if not (kindIs "invalid" $max) -}}
{{- if and (not (kindIs "string" $max)) (lt (int $max) 1) -}}
{{- fail "pdb.maxUnavailable must be at least 1, or no Pod could ever be evicted and node drains would hang" -}}
{{- end -}}
{{- else if kindIs "invalid" $min -}}
{{- fail "pdb: set pdb.minAvailable or pdb.maxUnavailable" -}}
{{- else if not (kindIs "string" $min) -}}
{{- if not (lt (int $min) (int $replicas)) -}}
{{- fail (printf "pdb.minAvailable (%d) must be below the number of replicas (%d), or no Pod could ever be evicted and node drains would hang" (int $min) (int $replicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
