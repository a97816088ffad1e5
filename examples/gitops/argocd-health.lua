-- Argo CD health of a ModelOptimization (kubeslim.dev/v1alpha1), from its status.
-- Install it as resource.customizations.health.kubeslim.dev_ModelOptimization in the
-- argocd-cm ConfigMap (see argocd-cm-patch.yaml beside this file).
hs = {}
if obj.status == nil or obj.status.state == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the kubeslim operator"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "the operator has not planned the latest spec yet"
  return hs
end
local state = obj.status.state
if state == "Succeeded" then
  hs.status = "Healthy"
elseif state == "Failed" then
  hs.status = "Degraded"
elseif state == "Suspended" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
hs.message = obj.status.summary or state
if obj.status.nextStep ~= nil and state ~= "Succeeded" then
  hs.message = hs.message .. " | next: " .. obj.status.nextStep
end
return hs
