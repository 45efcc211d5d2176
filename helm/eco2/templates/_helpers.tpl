{{- /*
The pieces every workload of the chart is made of. A workload's template (auth.yaml, chat.yaml...)
builds one context and includes these:

  root         the chart's top-level context ($)
  component    the Deployment's name after "eco2-": auth, chat, chat-worker, events-router...
  workload     its name in mesh/routes.yaml (its ServiceAccount eco2-WORKLOAD, its NetworkPolicy):
               chat-worker is "chat", events-router is "events"
  serve        NAME of `eco2 serve NAME`
  values       its block of values.yaml
  protocol     grpc (port 50051, gRPC health probes) or http (the gateway: 8080, GET /healthz)
  env          the settings the chart owns for it (ports, role, addresses...): user env may not repeat them
  secretEnv    settings read from Secrets: [{name, secret, key, optional}]
  database     true: DATABASE_URL from secrets.database
  redis        true: REDIS_URL from secrets.redis
  volumes      extra pod volumes; volumeMounts: their mounts in the container
*/}}

{{- define "eco2.fullname" -}}
eco2-{{ . }}
{{- end }}

{{- /* app.kubernetes.io/name is eco2-WORKLOAD, the route table's name, on every pod of the workload
(chat's workers, the events router too): the Istio ALLOW policies (istio.yaml) and the
NetworkPolicies select callers and callees by it. Objects of no workload carry eco2-COMPONENT. */}}
{{- define "eco2.selectorLabels" -}}
app.kubernetes.io/name: eco2-{{ .workload | default .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "eco2.labels" -}}
{{ include "eco2.selectorLabels" . }}
app.kubernetes.io/part-of: eco2
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{- define "eco2.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{ $image.repository }}@{{ $image.digest }}
{{- else -}}
{{ $image.repository }}:{{ $image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{- /* image.pullPolicy, or by default: Always for a tag (a tag can move: every start checks the
registry, and with it the pull secret), IfNotPresent for a digest (it cannot). */}}
{{- define "eco2.imagePullPolicy" -}}
{{- .Values.image.pullPolicy | default (ternary "IfNotPresent" "Always" (ne .Values.image.digest "")) -}}
{{- end }}

{{- /* The route table (files/routes.yaml links to mesh/routes.yaml) as a map. */}}
{{- define "eco2.routes" -}}
{{- $text := .Files.Get "files/routes.yaml" -}}
{{- if not $text -}}
{{- fail "files/routes.yaml (the route table, a link to mesh/routes.yaml) is missing from the chart" -}}
{{- end -}}
{{- $text -}}
{{- end }}

{{- /* host:port of service NAME for its clients (ECO2_<NAME>_ADDR). */}}
{{- define "eco2.address" -}}
{{- $ := .root -}}
eco2-{{ .name }}.{{ $.Release.Namespace }}.svc.{{ $.Values.clusterDomain }}:50051
{{- end }}

{{- /* ECO2_<NAME>_ADDR of every service in `calls`, refused unless the route table lets `workload`
call it (the chart never wires a call the mesh would deny). Output: YAML map. */}}
{{- define "eco2.addresses" -}}
{{- $routes := include "eco2.routes" .root | fromYaml -}}
{{- $out := dict -}}
{{- range .calls -}}
{{- $target := index $routes.services . | default dict -}}
{{- if not (has $.workload ($target.callers | default list)) -}}
{{- fail (printf "mesh/routes.yaml does not list %s among the callers of %s" $.workload .) -}}
{{- end -}}
{{- $_ := set $out (printf "ECO2_%s_ADDR" (upper .)) (include "eco2.address" (dict "root" $.root "name" .)) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end }}

{{- /* The settings every workload gets from the chart, plus its own (.env). Output: YAML map. */}}
{{- define "eco2.chartEnv" -}}
{{- $ := .root -}}
{{- $env := dict
  "ECO2_DEPLOYMENT" $.Values.common.deployment
  "ECO2_LOG_LEVEL" $.Values.common.logLevel
  "ECO2_OTEL_TRACES_EXPORTER" $.Values.common.otelTracesExporter
  "ECO2_METRICS_HOST" "0.0.0.0"
  "ECO2_METRICS_PORT" "9464"
  "ECO2_DATA_DIR" "/tmp/eco2"
-}}
{{- if eq .protocol "grpc" -}}
{{- $_ := set $env "ECO2_GRPC_HOST" "0.0.0.0" -}}
{{- $_ := set $env "ECO2_GRPC_PORT" "50051" -}}
{{- $_ := set $env "ECO2_SHUTDOWN_GRACE_S" (toString $.Values.shutdown.graceSeconds) -}}
{{- else -}}
{{- $_ := set $env "ECO2_HTTP_HOST" "0.0.0.0" -}}
{{- $_ := set $env "ECO2_HTTP_PORT" "8080" -}}
{{- end -}}
{{- if and (eq .protocol "grpc") (ne .workload "auth") -}}
{{- /* the keys that verify the wristbands auth injects (GetJwks): a call the route table allows */ -}}
{{- $auth := include "eco2.addresses" (dict "root" $ "workload" .workload "calls" (list "auth")) | fromYaml -}}
{{- $_ := set $env "ECO2_IDENTITY_JWKS_FROM" $auth.ECO2_AUTH_ADDR -}}
{{- end -}}
{{- if .database -}}
{{- /* the hook Job migrated before any pod of this release started */ -}}
{{- $_ := set $env "ECO2_MIGRATE_ON_START" (ternary "false" "true" $.Values.migrations.enabled) -}}
{{- end -}}
{{- toYaml (merge $env (.env | default dict)) -}}
{{- end }}

{{- /* A value of values.yaml as an environment string: lists and maps as JSON (the settings
parse JSON), whole numbers without an exponent. */}}
{{- define "eco2.envString" -}}
{{- if or (kindIs "slice" .) (kindIs "map" .) -}}
{{ toJson . }}
{{- else if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{ int64 . }}
{{- else -}}
{{ toString . }}
{{- end -}}
{{- end }}

{{- define "eco2.configMap" -}}
{{- $ := .root -}}
{{- $owned := include "eco2.chartEnv" . | fromYaml -}}
{{- $component := .component -}}
{{- $user := merge (deepCopy (.userEnv | default dict)) $.Values.common.env -}}
{{- range $name, $_ := $user -}}
{{- if hasKey $owned $name -}}
{{- fail (printf "%s: the chart sets %s itself (from shutdown, migrations, common, mesh or the workload's own values in values.yaml): remove it from env" $component $name) -}}
{{- end -}}
{{- if or (eq $name "DATABASE_URL") (eq $name "REDIS_URL") (hasSuffix "_ADDR" $name) -}}
{{- fail (printf "%s: %s comes from secrets.* or the route table, not from env" $component $name) -}}
{{- end -}}
{{- end }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "eco2.fullname" .component }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "eco2.labels" . | nindent 4 }}
data:
  {{- range $name, $value := merge $owned $user }}
  {{ $name }}: {{ include "eco2.envString" $value | quote }}
  {{- end }}
{{- end }}

{{- define "eco2.serviceAccount" -}}
{{- $ := .root -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "eco2.fullname" .workload }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "eco2.labels" (merge (dict "component" .workload) .) | nindent 4 }}
  {{- with .values.serviceAccountAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# The pods never call the Kubernetes API (Istio's sidecar brings its own token).
automountServiceAccountToken: false
{{- end }}

{{- /* Seconds from the pod's deletion to SIGKILL: preStop, then in-flight calls (grace), then
closing pools (bounded by grace too), plus a margin. */}}
{{- define "eco2.terminationGrace" -}}
{{- $s := .Values.shutdown -}}
{{- add (int $s.preStopSleepSeconds) (mul 2 (int $s.graceSeconds)) 5 -}}
{{- end }}

{{- define "eco2.autoscaled" -}}
{{- if and .values.autoscaling .values.autoscaling.enabled -}}true{{- end -}}
{{- end }}

{{- define "eco2.deployment" -}}
{{- $ := .root -}}
{{- $ctx := . -}}
{{- $grpc := eq .protocol "grpc" -}}
{{- $probes := $.Values.probes -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "eco2.fullname" .component }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "eco2.labels" . | nindent 4 }}
spec:
  {{- if not (include "eco2.autoscaled" .) }}
  replicas: {{ .values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  # A new pod must be ready before an old one goes.
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 25%, maxUnavailable: 0}
  selector:
    matchLabels:
      {{- include "eco2.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "eco2.labels" . | nindent 8 }}
      annotations:
        # a changed ConfigMap rolls the pods
        checksum/config: {{ include "eco2.configMap" . | sha256sum }}
        prometheus.io/scrape: "true"
        prometheus.io/port: "9464"
        prometheus.io/path: /metrics
        {{- if $.Values.mesh.istio.enabled }}
        # The sidecar starts before the app (it connects to Redis/Postgres through it) and keeps
        # draining until the app has finished its own shutdown.
        proxy.istio.io/config: {{ dict "holdApplicationUntilProxyStarts" true "terminationDrainDuration" (printf "%ds" (add (int $.Values.shutdown.preStopSleepSeconds) (mul 2 (int $.Values.shutdown.graceSeconds)))) | toJson | quote }}
        {{- end }}
        {{- with .values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "eco2.fullname" .workload }}
      automountServiceAccountToken: false
      # No {SERVICE}_PORT variables: they would land in the ECO2_* namespace (eco2-auth → ECO2_AUTH_PORT).
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ include "eco2.terminationGrace" $ }}
      securityContext:
        runAsNonRoot: true
        runAsUser: {{ $.Values.securityContext.runAsUser }}
        runAsGroup: {{ $.Values.securityContext.runAsGroup }}
        fsGroup: {{ $.Values.securityContext.fsGroup }}
        seccompProfile: {type: RuntimeDefault}
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      topologySpreadConstraints:
        {{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
        - topologyKey: {{ $key }}
          maxSkew: {{ $.Values.scheduling.topologySpread.maxSkew }}
          whenUnsatisfiable: {{ $.Values.scheduling.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "eco2.selectorLabels" $ctx | nindent 14 }}
          matchLabelKeys: [pod-template-hash]
        {{- end }}
      {{- with merge (deepCopy (.values.nodeSelector | default dict)) $.Values.scheduling.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with concat $.Values.scheduling.tolerations (.values.tolerations | default list) }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $.Values.scheduling.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "eco2.image" $ }}
          imagePullPolicy: {{ include "eco2.imagePullPolicy" $ }}
          command: [eco2]
          args: [serve, {{ .serve }}]
          ports:
            {{- if $grpc }}
            - {name: grpc, containerPort: 50051, protocol: TCP}
            {{- else }}
            - {name: http, containerPort: 8080, protocol: TCP}
            {{- end }}
            - {name: metrics, containerPort: 9464, protocol: TCP}
          envFrom:
            - configMapRef:
                name: {{ include "eco2.fullname" .component }}
          env:
            # caches of libraries go to the writable /tmp (the root filesystem is read-only)
            - {name: HOME, value: /tmp}
            {{- if .database }}
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef: {name: {{ $.Values.secrets.database.name }}, key: {{ $.Values.secrets.database.key }}}
            {{- end }}
            {{- if .redis }}
            - name: REDIS_URL
              valueFrom:
                secretKeyRef: {name: {{ $.Values.secrets.redis.name }}, key: {{ $.Values.secrets.redis.urlKey }}}
            {{- end }}
            {{- range .secretEnv }}
            - name: {{ .name }}
              valueFrom:
                secretKeyRef: {name: {{ .secret }}, key: {{ .key }}{{ if .optional }}, optional: true{{ end }}}
            {{- end }}
          {{- if $grpc }}
          startupProbe:
            grpc: {port: 50051}
            {{- toYaml $probes.startup | nindent 12 }}
          readinessProbe:
            grpc: {port: 50051}
            {{- toYaml $probes.readiness | nindent 12 }}
          livenessProbe:
            grpc: {port: 50051}
            {{- toYaml $probes.liveness | nindent 12 }}
          {{- else }}
          startupProbe:
            httpGet: {path: /healthz, port: http}
            {{- toYaml $probes.startup | nindent 12 }}
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            {{- toYaml $probes.readiness | nindent 12 }}
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            {{- toYaml $probes.liveness | nindent 12 }}
          {{- end }}
          lifecycle:
            # Still serving while the endpoint leaves the Services and Envoy's clusters.
            preStop:
              sleep: {seconds: {{ $.Values.shutdown.preStopSleepSeconds }}}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          securityContext:
            runAsNonRoot: true
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            {{- with .volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {sizeLimit: {{ $.Values.tmpSizeLimit }}}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}

{{- /* eco2-WORKLOAD: the route table's name for it (what Istio and its callers use). */}}
{{- define "eco2.service" -}}
{{- $ := .root -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "eco2.fullname" .workload }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "eco2.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "eco2.selectorLabels" . | nindent 4 }}
  ports:
    {{- if eq .protocol "grpc" }}
    - {name: grpc, port: 50051, targetPort: grpc, protocol: TCP, appProtocol: grpc}
    {{- else }}
    - {name: http, port: 8080, targetPort: http, protocol: TCP, appProtocol: http}
    {{- end }}
    - {name: metrics, port: 9464, targetPort: metrics, protocol: TCP, appProtocol: http}
{{- end }}

{{- /* One pod at a time may be evicted (node drains go on; a single replica may go too);
pods that never got ready are always evictable. */}}
{{- define "eco2.pdb" -}}
{{- $ := .root -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "eco2.fullname" .component }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "eco2.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "eco2.selectorLabels" . | nindent 6 }}
{{- end }}

{{- /* Ingress to every pod of a workload (all its components): its serving port from the callers
mesh/routes.yaml lists, its metrics port from Prometheus. Nothing else. */}}
{{- define "eco2.networkPolicy" -}}
{{- $ := .root -}}
{{- $routes := include "eco2.routes" $ | fromYaml -}}
{{- $route := index $routes.services .workload | default dict -}}
{{- $port := ternary 50051 8080 (eq .protocol "grpc") -}}
{{- $callers := $route.callers | default list -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "eco2.fullname" .workload }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "eco2.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      app.kubernetes.io/name: eco2-{{ .workload }}
      app.kubernetes.io/instance: {{ $.Release.Name }}
  policyTypes: [Ingress]
  ingress:
    {{- if $callers }}
    # callers of {{ .workload }} in mesh/routes.yaml: {{ join ", " $callers }}
    - ports:
        - {port: {{ $port }}, protocol: TCP}
      from:
        {{- range $callers }}
        {{- if eq . "ingress" }}
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ $.Values.mesh.ingressNamespace }}
          podSelector:
            matchLabels:
              {{- toYaml $.Values.mesh.ingressSelector | nindent 14 }}
        {{- else }}
        - podSelector:
            matchLabels:
              app.kubernetes.io/name: eco2-{{ . }}
              app.kubernetes.io/instance: {{ $.Release.Name }}
        {{- end }}
        {{- end }}
    {{- end }}
    - ports:
        - {port: 9464, protocol: TCP}
        {{- if $.Values.mesh.istio.enabled }}
        # the sidecar's merged metrics and Envoy's own
        - {port: 15020, protocol: TCP}
        - {port: 15090, protocol: TCP}
        {{- end }}
      from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ $.Values.networkPolicy.metricsNamespace }}
    {{- with $.Values.networkPolicy.extraIngress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{- /* A KEDA ScaledObject with .triggers, or without KEDA a CPU HorizontalPodAutoscaler; the
same bounds and behaviour either way. */}}
{{- define "eco2.autoscaler" -}}
{{- $ := .root -}}
{{- $as := .values.autoscaling -}}
{{- if $.Values.keda.enabled }}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ include "eco2.fullname" .component }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "eco2.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "eco2.fullname" .component }}
  minReplicaCount: {{ $as.minReplicas }}
  maxReplicaCount: {{ $as.maxReplicas }}
  pollingInterval: {{ $.Values.keda.pollingInterval }}
  cooldownPeriod: {{ $.Values.keda.cooldownPeriod }}
  fallback:
    failureThreshold: {{ $.Values.keda.fallbackFailureThreshold }}
    replicas: {{ $as.fallbackReplicas }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        {{- toYaml $.Values.autoscaling.behavior | nindent 8 }}
  triggers:
    {{- toYaml .triggers | nindent 4 }}
{{- else }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "eco2.fullname" .component }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "eco2.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "eco2.fullname" .component }}
  minReplicas: {{ max 1 $as.minReplicas }}
  maxReplicas: {{ $as.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: {{ $.Values.autoscaling.cpuUtilization }}}
  behavior:
    {{- toYaml $.Values.autoscaling.behavior | nindent 4 }}
{{- end }}
{{- end }}

{{- /* A Redis Streams trigger: KEDA reads the consumer group's lag or pending count itself,
authenticated by the TriggerAuthentication eco2-redis (keda.yaml). */}}
{{- define "eco2.redisStreamTrigger" -}}
{{- $ := .root -}}
{{- $meta := dict "stream" .stream "consumerGroup" .group -}}
{{- if eq .mode "lag" -}}
{{- $_ := set $meta "lagCount" (toString .target) -}}
{{- $_ := set $meta "activationLagCount" "0" -}}
{{- else -}}
{{- $_ := set $meta "pendingEntriesCount" (toString .target) -}}
{{- end -}}
{{- if $.Values.secrets.redis.tls -}}
{{- $_ := set $meta "enableTLS" "true" -}}
{{- end -}}
{{- toYaml (list (dict "type" "redis-streams" "name" .name "metadata" $meta "authenticationRef" (dict "name" "eco2-redis"))) -}}
{{- end }}

{{- /* A Prometheus trigger on the sum of a gauge over the release's pods. */}}
{{- define "eco2.prometheusTrigger" -}}
{{- $ := .root -}}
{{- /* pods of the component are eco2-COMPONENT-<replica set>-<suffix> (not eco2-events-router-...) */ -}}
{{- $query := printf "sum(%s{namespace=%q, pod=~%q}) or vector(0)" .metric $.Release.Namespace (printf "eco2-%s-[^-]+-[^-]+" .component) -}}
{{- $meta := dict "serverAddress" $.Values.keda.prometheus.serverAddress "query" $query "threshold" (toString .target) -}}
{{- toYaml (list (dict "type" "prometheus" "name" .name "metadata" $meta)) -}}
{{- end }}
