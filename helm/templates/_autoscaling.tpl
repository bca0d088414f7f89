{{/*
The load signals the autoscalers act on, one per entry of autoscaling.metrics:
  slots: mamtra_state_slots_used per pod, target maxStreams x targetSlotUtilization
  queue: mamtra_requests_waiting per pod, target targetQueuePerPod
Rendered as a YAML list of {metric, target} for the HPA and the KEDA ScaledObject alike.
*/}}
{{- define "mamtra.loadSignals" -}}
{{- range .Values.autoscaling.metrics }}
{{- if eq . "slots" }}
- metric: mamtra_state_slots_used
  target: {{ include "mamtra.slotTarget" $ | quote }}
{{- else if eq . "queue" }}
- metric: mamtra_requests_waiting
  target: {{ $.Values.autoscaling.targetQueuePerPod | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mamtra.hpaBehavior" -}}
scaleUp:
  stabilizationWindowSeconds: {{ .Values.autoscaling.behavior.scaleUp.stabilizationWindowSeconds }}
  policies:
    - type: Pods
      value: {{ .Values.autoscaling.behavior.scaleUp.podsPerMinute }}
      periodSeconds: 60
scaleDown:
  stabilizationWindowSeconds: {{ .Values.autoscaling.behavior.scaleDown.stabilizationWindowSeconds }}
  policies:
    - type: Pods
      value: {{ .Values.autoscaling.behavior.scaleDown.podsPerMinute }}
      periodSeconds: 60
{{- end }}
